"""Socket addresses: parsing what users write, converting to and from pmq_addr."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Tuple, Union

from ._msquic import ffi

Address = Tuple[str, int]
AddressLike = Union[Address, str, None]

# Hosts that mean "every local address, either family".
_WILDCARDS = {"", "*"}


def split_host_port(address: AddressLike) -> tuple[str | None, int]:
    """Accept ``(host, port)``, ``"host:port"``, ``"[v6]:port"`` or None (any host, port 0)."""
    if address is None:
        return None, 0
    if isinstance(address, str):
        host, sep, port_text = address.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"unparsable address {address!r}: expected 'host:port'")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port: Any = int(port_text)
    elif isinstance(address, tuple) and len(address) == 2:
        host, port = address
        if not isinstance(host, str):
            raise TypeError(f"address host must be a str, not {type(host).__name__}")
    else:
        raise TypeError(f"address must be (host, port), 'host:port' or None, not {address!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return (None if host in _WILDCARDS else host), port


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address in text form (no zone: those go through getaddrinfo)."""
    if "%" in host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def resolve(host: str, port: int, *, passive: bool = False) -> Any:
    """Resolve host (an IP literal or a name) to a ``pmq_addr *`` (first UDP result).
    ``socket.gaierror`` when the name does not resolve."""
    if is_ip_literal(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return from_sockaddr(family, (host, port, 0, 0))
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
    except socket.gaierror as exc:
        raise _unresolved(host, exc) from None
    return from_sockaddr(infos[0][0], infos[0][4])


async def resolve_async(host: str, port: int) -> Any:
    """:func:`resolve` without blocking the event loop on DNS."""
    if is_ip_literal(host):
        return resolve(host, port)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise _unresolved(host, exc) from None
    return from_sockaddr(infos[0][0], infos[0][4])


def _unresolved(host: str, exc: socket.gaierror) -> socket.gaierror:
    """A DNS failure stays an OSError (``socket.gaierror``, its ``errno`` an EAI_* code
    callers may test) and names the host, which getaddrinfo's message leaves out."""
    return socket.gaierror(exc.errno, f"cannot resolve host {host!r}: {exc.strerror}")


def from_sockaddr(family: int, sockaddr: tuple[Any, ...]) -> Any:
    """A pmq_addr from a getaddrinfo result."""
    addr = ffi.new("pmq_addr *")
    addr.family = family
    addr.port = sockaddr[1]
    packed = socket.inet_pton(family, sockaddr[0])
    ffi.memmove(addr.ip, packed, len(packed))
    if family == socket.AF_INET6:
        addr.scope_id = sockaddr[3]
    return addr


def any_address(port: int) -> Any:
    """Every local address (msquic's unspecified family) on ``port``."""
    addr = ffi.new("pmq_addr *")
    addr.family = socket.AF_UNSPEC
    addr.port = port
    return addr


def free_udp_port(addr: Any) -> int:
    """A UDP port no socket holds on the pmq_addr ``addr`` (its port is ignored), for a
    listener asked for port 0.

    msquic binds a listener's sockets with SO_REUSEPORT, and Linux gives a port-0 bind with
    SO_REUSEPORT a port that another SO_REUSEPORT socket of the same user already holds: two
    listeners on port 0, in this process or another, could share a port and each receive a
    share of the other's datagrams. A probe bound without SO_REUSEPORT gets a port nobody holds.
    """
    sockaddr: tuple[Any, ...]
    if addr.family == socket.AF_INET:
        family, sockaddr = socket.AF_INET, (socket.inet_ntop(socket.AF_INET, bytes(ffi.buffer(addr.ip, 4))), 0)
    elif addr.family == socket.AF_INET6:
        family = socket.AF_INET6
        sockaddr = (socket.inet_ntop(socket.AF_INET6, bytes(ffi.buffer(addr.ip, 16))), 0, 0, addr.scope_id)
    else:  # every local address: msquic binds one dual-stack IPv6 socket
        family, sockaddr = socket.AF_INET6, ("::", 0, 0, 0)
    try:
        probe = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:  # no IPv6 on this machine: msquic's wildcard socket is IPv4 then
        family, sockaddr = socket.AF_INET, ("0.0.0.0", 0)
        probe = socket.socket(family, socket.SOCK_DGRAM)
    with probe:
        if family == socket.AF_INET6 and addr.family != socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # the port free in both families
        probe.bind(sockaddr)
        port: int = probe.getsockname()[1]
        return port


def from_native(addr: Any) -> Address | None:
    """``(host, port)`` from a pmq_addr, or None when unset."""
    if addr.family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(ffi.buffer(addr.ip, 4))), addr.port
    if addr.family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, bytes(ffi.buffer(addr.ip, 16))), addr.port
    if addr.family == socket.AF_UNSPEC and addr.port:
        return "", addr.port  # a wildcard listener: every local address, either family (as start() spells it)
    return None
