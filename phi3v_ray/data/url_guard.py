"""Which hosts a catalog URL may reach: no instance-metadata service, no loopback, no private network by default.

A catalog is data someone else wrote. On a cloud node a row whose imageurl points at 169.254.169.254 (the
instance-metadata service, which hands out credentials) or at an internal host would make `data fetch` a proxy into
the cluster's network (server-side request forgery). So every host is resolved before a request is sent (and again
for every redirect target), and a host with any address that is link-local, loopback, private, unspecified,
multicast or otherwise not public is refused, with the reason as the row's status. The address the connection
actually reached is checked too, which closes the gap of a name that resolves differently the second time (DNS
rebinding). `allow_private` lifts the rule for catalogs served from inside the network (and the tests' loopback
server).
"""

from __future__ import annotations

import ipaddress
import socket

BLOCKED_KIND = "blocked_address"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(Exception):
    """A URL whose host may not be contacted; the message is the row's status (`blocked_address: ...`)."""


def address_class(address: str | IpAddress) -> str | None:
    """Why this address may not be fetched from ("link-local", "loopback", ...), or None for a public address."""
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 reaches 127.0.0.1
    if mapped is not None:
        ip = mapped
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("not public", not ip.is_global),  # shared address space (100.64/10, some clouds' metadata), reserved
    )
    return next((label for label, applies in checks if applies), None)


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (raises OSError / socket.gaierror when it does not resolve)."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(answer[4][0]) for answer in answers})


def check_host(host: str, port: int, *, allow_private: bool, via_redirect: bool = False) -> None:
    """Refuse a host any of whose addresses is not public (any of them may be the one connected to)."""
    if allow_private:
        return
    for address in resolve(host, port):
        label = address_class(address)
        if label is not None:
            raise BlockedAddress(_message(host, address, label, via_redirect))


def check_peer(host: str, address: str | None, *, allow_private: bool, via_redirect: bool = False) -> None:
    """Refuse a connection that reached a non-public address although the name resolved to a public one."""
    if allow_private or address is None:
        return
    label = address_class(address)
    if label is not None:
        raise BlockedAddress(_message(host, address, label, via_redirect))


def _message(host: str, address: str, label: str, via_redirect: bool) -> str:
    where = " (reached by a redirect)" if via_redirect else ""
    return (
        f"{BLOCKED_KIND}: {host} resolves to {address} ({label}){where}; "
        "use --allow-private-addresses for a catalog served from inside your network"
    )
