"""The address guard at the socket, for processor traffic that does not go through httpx (yt-dlp).

yt-dlp follows redirects and URLs found inside pages (``<video src=...>``, manifests, subtitle
tracks) with its own HTTP stack, so checking the submitted URL is not enough. Inside
``guarded()`` every TCP connect made by the current thread is checked against
``urlguard.is_public_address`` at the moment it happens, on the address actually connected to:
a redirect to 127.0.0.1, a page pointing at the LAN, or a name answering differently on its
second lookup (DNS rebinding) all end in ``RefusedConnection`` before a packet is sent.

The check is per thread (a processor runs in its own thread) so the worker's own connection to
the morag server, which may well be on a private address, is never affected. yt-dlp's
external downloaders (ffmpeg for some HLS streams) connect from another process, out of this
hook's reach: ``refuse_external_downloads`` makes them fail while a guard is active.

    guarded(allow_private) ──> thread-local Guard ──> socket.socket.connect/connect_ex (patched once)
                                                        └─ family INET/INET6 and not public: refused
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from protocol import urlguard

_local = threading.local()
_install_lock = threading.Lock()
_original: dict[str, Any] = {}


class RefusedConnection(ConnectionRefusedError):
    """A processor tried to connect to an address that is not public."""


@dataclass
class Guard:
    """What one guarded block refused (to tell 'refused' apart from network trouble afterwards)."""

    refused: list[str] = field(default_factory=list)


def active() -> Guard | None:
    """The guard of the current thread, if any."""
    guard: Guard | None = getattr(_local, "guard", None)
    return guard


def _checked(sock: socket.socket, address: Any) -> Any:
    guard = active()
    if guard is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return address
    if not isinstance(address, tuple) or not address:
        return address
    host = str(address[0])
    ip = urlguard.parse_ip(host)
    if ip is None:  # a name: look it up once here and connect to what was checked
        try:
            ip = urlguard.parse_ip(_resolve(host, int(address[1]), sock.family))
        except urlguard.UnsafeURL as exc:
            guard.refused.append(f"{host}: {exc}")
            raise RefusedConnection(errno.EACCES, f"refused connection to {host}: {exc}") from exc
        assert ip is not None
        address = (str(ip), *address[1:])
    if not urlguard.is_public_address(ip):
        guard.refused.append(str(ip))
        raise RefusedConnection(
            errno.EACCES,
            f"refused connection to {ip}: a private or loopback address (the worker allows only "
            "public addresses for URL jobs)",
        )
    return address


def _resolve(host: str, port: int, family: int) -> str:
    from protocol.netguard import checked_addresses

    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError as exc:
        raise urlguard.UnsafeURL("unresolvable_host", f"cannot resolve {host}: {exc}") from exc
    return checked_addresses(host, infos)[0]


def _connect(self: socket.socket, address: Any) -> None:
    _original["connect"](self, _checked(self, address))


def _connect_ex(self: socket.socket, address: Any) -> int:
    result: int = _original["connect_ex"](self, _checked(self, address))
    return result


def install() -> None:
    """Patch ``socket.socket.connect``/``connect_ex`` once per process (a no-op outside ``guarded``)."""
    with _install_lock:
        if "connect" in _original:
            return
        _original["connect"] = socket.socket.connect
        _original["connect_ex"] = socket.socket.connect_ex
        socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]


@contextmanager
def guarded(allow_private: bool = False) -> Iterator[Guard]:
    """Check every TCP connect this thread makes inside the block (nothing when private is allowed)."""
    guard = Guard()
    if allow_private:
        yield guard
        return
    install()
    previous = active()
    _local.guard = guard
    try:
        yield guard
    finally:
        _local.guard = previous


def refuse_external_downloads() -> None:
    """Make yt-dlp's ffmpeg downloader fail inside a guard: ffmpeg connects from its own process."""
    from yt_dlp.downloader import external
    from yt_dlp.utils import DownloadError

    with _install_lock:
        if "ffmpeg_download" in _original:
            return
        original = external.FFmpegFD.real_download
        _original["ffmpeg_download"] = original

        def real_download(self: Any, filename: str, info_dict: dict[str, Any]) -> Any:
            guard = active()
            if guard is not None:
                guard.refused.append(f"ffmpeg download of {info_dict.get('url')}")
                raise DownloadError(
                    "refused: this stream can only be downloaded by ffmpeg, whose connections the "
                    "worker's address guard cannot check"
                )
            return original(self, filename, info_dict)

        external.FFmpegFD.real_download = real_download
