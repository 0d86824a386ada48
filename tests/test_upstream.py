"""app/upstream.py's DirectPoster: a delivery's POST goes straight to the client's pool with the
same URL, headers and body ``client.send`` would have sent, and falls back to ``client.send``
where the client routes by URL (proxies)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from app import __version__
from app.upstream import DirectPoster, UpstreamUnreachable, pooled_client


def client(base_url: str = "https://mm.test/base/") -> httpx.AsyncClient:
    return pooled_client(
        base_url=base_url, headers={"mmApiKey": "k-1"}, timeout=5.0, max_connections=2
    )


def refuse_send(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("client.send must not be used")


async def test_the_post_goes_straight_to_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    http = client()
    poster = DirectPoster(http)
    assert poster.pool is not None
    monkeypatch.setattr(http, "send", refuse_send)
    with respx.mock() as mock:
        route = mock.post("https://mm.test/base/api/v1/x%2Fy").respond(200, json={"ok": 1})
        answer = await poster.post_json("/api/v1/x%2Fy", b'{"a": 1}')
        again = await poster.post_json("/api/v1/x%2Fy", b'{"a": 2}')
    assert (answer.status_code, answer.json, again.json) == (200, {"ok": 1}, {"ok": 1})
    sent = route.calls[0].request
    assert sent.content == b'{"a": 1}'
    assert sent.headers["mmApiKey"] == "k-1"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"] == f"ctmm-bridge/{__version__}"
    assert sent.headers["content-length"] == "8"
    assert sent.headers["host"] == "mm.test"
    await http.aclose()


async def test_failures_map_to_upstream_errors() -> None:
    http = client()
    with respx.mock() as mock:
        mock.post("https://mm.test/base/p").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(UpstreamUnreachable, match="refused"):
            await DirectPoster(http).post_json("/p", b"{}")
    await http.aclose()


async def test_a_client_behind_a_proxy_keeps_client_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    http = client()
    poster = DirectPoster(http)
    assert poster.pool is None
    sent: list[httpx.Request] = []

    async def fake_send(request: httpx.Request, **_kwargs: Any) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"ok": 1}, request=request)

    monkeypatch.setattr(http, "send", fake_send)
    answer = await poster.post_json("/api/v1/t", b"{}")
    assert answer.json == {"ok": 1}
    assert str(sent[0].url) == "https://mm.test/base/api/v1/t"
    await http.aclose()


def test_parsed_urls_are_bounded() -> None:
    poster = DirectPoster(client())
    for i in range(DirectPoster.MAX_URLS + 5):
        url = poster._url(f"/t/{i}")
        assert (url.scheme, url.host, url.port) == (b"https", b"mm.test", None)
        assert url.target == f"/base/t/{i}".encode()
    assert len(poster._urls) <= DirectPoster.MAX_URLS
