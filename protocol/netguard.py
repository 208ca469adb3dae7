"""httpx transports that enforce the address guard where the socket connects.

``urlguard.check_url`` looks a name up before a request; the HTTP client would look it up again
to connect, and a name can answer differently the second time (DNS rebinding). These transports
resolve the name once, refuse it if any address is not public (``urlguard.is_public_address``),
and connect to the checked address itself, so what was checked is what is reached. Redirects do
not escape either: every hop opens its connection through the same backend. TLS still verifies
the certificate for the name (httpcore takes the server name from the URL, not the socket).

A refused connection raises ``urlguard.UnsafeURL`` (httpx passes foreign exceptions through), so
callers tell "refused" from network trouble. Used by the worker's web fetcher and by the server's
webhook sender; yt-dlp does not use httpx and is guarded at the socket (``worker/netguard.py``).
"""

from __future__ import annotations

import socket
import typing

import anyio
import httpcore
import httpx

from protocol import urlguard

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


def checked_addresses(host: str, infos: typing.Iterable[tuple[typing.Any, ...]]) -> list[str]:
    """The addresses of one lookup; raises UnsafeURL if any of them is not public."""
    addresses: list[str] = []
    for info in infos:
        ip = urlguard.parse_ip(str(info[4][0]))
        if ip is None:
            continue
        if not urlguard.is_public_address(ip):
            raise urlguard.UnsafeURL(
                "private_address",
                f"{host} resolves to {ip}, a private or loopback address; the operator must allow "
                "private addresses to reach it",
            )
        if str(ip) not in addresses:
            addresses.append(str(ip))
    if not addresses:
        raise urlguard.UnsafeURL("unresolvable_host", f"cannot resolve {host}")
    return addresses


def _literal_or_name(host: str) -> str:
    ip = urlguard.parse_ip(host)
    return str(ip) if ip is not None else host


def resolve_public(host: str, port: int) -> list[str]:
    """Look ``host`` up once; its addresses, all of them public, or UnsafeURL."""
    name = _literal_or_name(host)
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        raise urlguard.UnsafeURL("private_address", f"{host} is a loopback address")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise urlguard.UnsafeURL("unresolvable_host", f"cannot resolve {host}: {exc}") from exc
    return checked_addresses(host, infos)


async def resolve_public_async(host: str, port: int) -> list[str]:
    """``resolve_public`` for async code (one lookup, in a thread)."""
    return await anyio.to_thread.run_sync(resolve_public, host, port)


class GuardedBackend(httpcore.NetworkBackend):
    """A sync network backend that connects only to checked public addresses."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in resolve_public(host, port):
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        raise urlguard.UnsafeURL("unsupported_scheme", "unix sockets are not reachable through the guard")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    """The async twin of GuardedBackend."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in await resolve_public_async(host, port):
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise urlguard.UnsafeURL("unsupported_scheme", "unix sockets are not reachable through the guard")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _pool_options(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> dict[str, typing.Any]:
    pool = transport._pool
    return {
        "ssl_context": pool._ssl_context,
        "max_connections": pool._max_connections,
        "max_keepalive_connections": pool._max_keepalive_connections,
        "keepalive_expiry": pool._keepalive_expiry,
        "http1": pool._http1,
        "http2": pool._http2,
    }


def transport(allow_private: bool = False, **kwargs: typing.Any) -> httpx.BaseTransport:
    """An httpx transport for ``httpx.Client(transport=...)``; unguarded only when private is allowed."""
    plain = httpx.HTTPTransport(**kwargs)
    if not allow_private:
        plain._pool = httpcore.ConnectionPool(network_backend=GuardedBackend(), **_pool_options(plain))
    return plain


def async_transport(allow_private: bool = False, **kwargs: typing.Any) -> httpx.AsyncBaseTransport:
    """An httpx transport for ``httpx.AsyncClient(transport=...)``; see ``transport``."""
    plain = httpx.AsyncHTTPTransport(**kwargs)
    if not allow_private:
        backend = GuardedAsyncBackend()
        plain._pool = httpcore.AsyncConnectionPool(network_backend=backend, **_pool_options(plain))
    return plain


__all__ = [
    "GuardedAsyncBackend",
    "GuardedBackend",
    "async_transport",
    "checked_addresses",
    "resolve_public",
    "transport",
]
