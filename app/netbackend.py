# ruff: noqa: ASYNC109  (httpcore's interface passes timeouts as parameters)
"""An asyncio network backend for httpx's connection pool: the same HTTP client, less CPU.

httpx on asyncio goes through httpcore's anyio backend, which pays for anyio's cancel scopes
and typed attributes on every read and write, and asks each pooled connection whether its
socket is readable (``get_extra_info``, rebuilt for every question) several times per
request: together more than the HTTP itself (bench/README.md). Here a plain
``asyncio.Protocol`` is the stream: reads wait on one future, "is the idle connection still
usable" is a flag set by the event loop, and a request's head and body go out in one
``send`` (writes are held until the first read, ``aclose`` or 64 KiB), so the server wakes
once per request, not twice. TLS (``start_tls``) and timeouts keep httpcore's meaning.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore
import httpx

#: Held writes go out at the latest when this many bytes are waiting.
_CORK_BYTES = 64 * 1024


class _Stream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._eof = False
        self._error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    # -- protocol (called by the event loop) -----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    # -- stream (called by httpcore) -------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        if not self._buffer and not self._eof:
            self._reader = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._reader
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading the answer") from None
            finally:
                self._reader = None
        if not self._buffer:
            if self._error is not None:
                raise httpcore.ReadError(str(self._error)) from self._error
            return b""
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._held.append(buffer)
        self._held_bytes += len(buffer)
        if self._held_bytes >= _CORK_BYTES:
            await self._flush(timeout)

    async def _flush(self, timeout: float | None) -> None:
        if not self._held:
            return
        data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
        self._held.clear()
        self._held_bytes = 0
        transport = self._transport
        if transport is None or transport.is_closing() or self._error is not None:
            raise httpcore.WriteError("the connection is closed")
        try:
            transport.write(data)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc
        if self._drain is not None and not self._drain.done():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._drain)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out sending the request") from None

    async def aclose(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._held:
                transport.write(b"".join(self._held))
                self._held.clear()
            transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        assert self._transport is not None
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:
            raise httpcore.ConnectError("the TLS handshake did not complete")
        self._transport = transport
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        transport = self._transport
        if info == "is_readable":
            # An idle keep-alive connection the server closed (or spoke on) is not reusable.
            return self._eof or bool(self._buffer)
        if transport is None:
            return None
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections for httpcore's pool as ``_Stream`` protocols on the running loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _transport, stream = await loop.create_connection(
                    _Stream, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = stream.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _transport, stream = await loop.create_unix_connection(_Stream, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {path}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request mapping, errors, TLS settings), its pool on
    ``AsyncioBackend``. httpx has no parameter for the backend, so the pool it built is
    replaced by the same pool with ours (the tests check it is used)."""

    def __init__(self, *, limits: httpx.Limits, verify: bool | ssl.SSLContext = True) -> None:
        super().__init__(limits=limits, verify=verify)
        old = self._pool
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=old._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=AsyncioBackend(),
        )
