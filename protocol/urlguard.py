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


# Ranges that some Python versions still call "global" but that lead into someone's network or are
# not unicast: the IETF protocol block, 6to4 (and its relay anycast), site-local IPv6, the NAT64
# and IPv4-compatible prefixes (their embedded IPv4 address is checked instead).
_DENY = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.0.0/24", "192.88.99.0/24", "2002::/16", "fec0::/10", "::/96", "64:ff9b:1::/48")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally reachable unicast addresses (deny by default).

    Uses the standard library's ``is_global`` (IANA special-purpose registries) and refuses
    multicast, reserved and the ranges in ``_DENY`` on top; IPv4-mapped and NAT64 addresses are
    judged by the IPv4 address inside them.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _DENY if net.version == ip.version):
        return False
    return bool(ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified))


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not is_public_address(ip)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text`` (brackets and a zone id allowed), or None if it is a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


def check_scheme(url: str) -> str:
    """The host of an http(s) URL; raises UnsafeURL for other schemes or a missing host."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:  # "http://[::1", bad ports: the URL cannot be parsed
        raise UnsafeURL("invalid_url", f"the URL cannot be parsed: {exc}") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UnsafeURL("unsupported_scheme", f"only http and https URLs are accepted, not {parts.scheme!r}")
    if not hostname:
        raise UnsafeURL("invalid_url", "the URL has no host")
    return hostname


def check_url(url: str, allow_private: bool = False, resolve: bool = True) -> None:
    """Raise UnsafeURL unless ``url`` is http(s) and (unless allowed) resolves to public addresses."""
    host = check_scheme(url)
    if allow_private:
        return
    literal = parse_ip(host)
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
        addresses = [ip for ip in (parse_ip(str(info[4][0])) for info in infos) if ip is not None]
    for ip in addresses:
        if _is_private(ip):
            raise UnsafeURL(
                "private_address",
                f"{host} resolves to {ip}, a private or loopback address; the operator must allow "
                "private addresses to fetch it",
            )
