"""The address guard's idea of "public" (finding #4): globally reachable unicast only."""

from __future__ import annotations

import ipaddress

import pytest

from protocol.urlguard import UnsafeURL, check_url, is_public_address


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # carrier-grade NAT, Tailscale
        "100.127.255.254",
        "192.0.0.8",  # IETF protocol assignments
        "192.0.0.170",
        "192.88.99.1",  # 6to4 relay anycast
        "2002::1",  # 6to4
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "fec0::1",  # site-local
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
        "::1", "::", "fe80::1", "fc00::1", "fd12::1", "2001:db8::1",
        "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255", "198.18.0.1",
    ],
)  # fmt: skip
def test_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    with pytest.raises(UnsafeURL) as exc:
        host = f"[{address}]" if ":" in address else address
        check_url(f"http://{host}/x")
    assert exc.value.code == "private_address"


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/x", "http://host:99999/", "http://host:port/"])
def test_unparseable_urls_are_invalid_url(url: str) -> None:
    with pytest.raises(UnsafeURL) as exc:
        check_url(url)
    assert exc.value.code == "invalid_url"


def test_private_allowed_explicitly() -> None:
    check_url("http://127.0.0.1:8000/x", allow_private=True)
