"""``app.server``'s one-send transport: an answer's head goes out with its body in one write."""

from __future__ import annotations

import asyncio
from typing import Any

from app.server import _OneSendTransport


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 1)}

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return self.extra.get(name)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_head_and_body_go_out_in_one_write() -> None:
    raw = FakeTransport()
    t = _OneSendTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert raw.writes == []
    t.write(b"ok")
    assert raw.writes == [HEAD + b"ok"]
    await asyncio.sleep(0)  # the end-of-turn check finds nothing held
    assert raw.writes == [HEAD + b"ok"]
    t.write(b"more")  # not a head: out at once
    assert raw.writes[-1] == b"more"
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's


async def test_a_head_alone_goes_out_at_the_end_of_the_turn_or_at_close() -> None:
    raw = FakeTransport()
    t = _OneSendTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    await asyncio.sleep(0)
    assert raw.writes == [HEAD]
    t.write(HEAD)
    t.close()
    assert raw.writes == [HEAD, HEAD]
    assert raw.closed
    await asyncio.sleep(0)
    assert raw.writes == [HEAD, HEAD]  # nothing twice, nothing after close
