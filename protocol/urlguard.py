"""URL checks both sides need: only http(s), and no private or loopback targets unless allowed.

Used by the server (webhook targets, URL jobs) and the worker (web pages, media URLs), so a job
cannot turn either into a way into a private network.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

ALLOWED_SCHEMES = frozenset({"http", "https"})


class UnsafeURL(ValueError):
    """The URL is not allowed; ``code`` says why (stable, for error bodies)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_scheme(url: str) -> str:
    """The host of an http(s) URL; raises UnsafeURL for other schemes or a missing host."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UnsafeURL("unsupported_scheme", f"only http and https URLs are accepted, not {parts.scheme!r}")
    if not parts.hostname:
        raise UnsafeURL("invalid_url", "the URL has no host")
    return parts.hostname


def check_url(url: str, allow_private: bool = False, resolve: bool = True) -> None:
    """Raise UnsafeURL unless ``url`` is http(s) and (unless allowed) resolves to public addresses."""
    host = check_scheme(url)
    if allow_private:
        return
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    elif host.lower() == "localhost" or host.lower().endswith(".localhost"):
        raise UnsafeURL("private_address", f"{host} is a loopback address")
    elif not resolve:
        return
    else:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError as exc:
            raise UnsafeURL("unresolvable_host", f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for ip in addresses:
        if _is_private(ip):
            raise UnsafeURL(
                "private_address",
                f"{host} resolves to {ip}, a private or loopback address; the operator must allow "
                "private addresses to fetch it",
            )
