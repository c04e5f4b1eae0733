"""Where a webhook may be sent: the public internet only, unless
``settings.SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` allows private addresses too (the embedded
default does, for its loopback sinks).

A webhook URL comes from whoever edits a preset. Left unchecked, it makes this server call
its own loopback services, the private network behind it or a cloud metadata endpoint
(169.254.169.254) on that person's behalf. It is checked twice:

* when a preset is saved, on the URL's host if it is an IP address or a localhost name (no
  DNS lookup there: a name may rightly resolve elsewhere later);
* at each send, on every address the host resolves to, and the connection then goes to the
  address that was checked, so a DNS answer that changes in between cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_SETTING = "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES"


class DestinationRefused(Exception):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


def private_addresses_allowed() -> bool:
    return bool(settings.SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES)


def address_kind(address: IPAddress) -> str:
    """What puts an address out of a webhook's reach ('' for a public one). IPv6 forms that
    carry an IPv4 address (mapped, 6to4, Teredo) are judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if carried is not None:
            return address_kind(carried)
    for kind, applies in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if applies:
            return kind
    return "" if address.is_global else "non-public"


def _numeric_address(host: str) -> IPAddress | None:
    """The address a host names without a DNS lookup (any numeric form), else None."""
    try:
        found = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return ipaddress.ip_address(found[0][4][0])


def _is_localhost_name(host: str) -> bool:
    # RFC 6761: localhost and every name under it are loopback, whatever DNS says.
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def url_refusal(url: str) -> str:
    """Why a webhook URL may not be saved ('' when it may), without any DNS lookup."""
    if private_addresses_allowed():
        return ""
    host = urlsplit(url).hostname or ""
    if _is_localhost_name(host):
        kind = "loopback"
    else:
        address = _numeric_address(host)
        kind = address_kind(address) if address is not None else ""
    if not kind:
        return ""
    return (
        f"{url} targets {host}, a {kind} address: webhooks may only reach public internet "
        f"addresses here ({ALLOW_SETTING} allows private ones)."
    )


def resolve_public(url: str, host: str, port: int) -> str:
    """The address to connect to for ``host``: the first it resolves to, once every one of
    them is public. Raises ``DestinationRefused`` naming the address and why, or OSError
    when the name does not resolve."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in found]
    for text in addresses:
        kind = address_kind(ipaddress.ip_address(text.split("%")[0]))
        if kind:
            raise DestinationRefused(
                f"Refused to send to {url}: {host} resolves to {text}, a {kind} address "
                f"({ALLOW_SETTING} allows it)."
            )
    return addresses[0]
