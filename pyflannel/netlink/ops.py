"""The kernel calls backends make: devices and addresses, and batched entry changes.

Everything goes through one :class:`~pyflannel.netlink.rtnl.transport.RtnlSocket`
with our own codec (:mod:`pyflannel.netlink.rtnl`):

- Routes, neighbours and FDB entries in batches: thousands of requests per socket
  write, and dumps filtered by the kernel to one device or route protocol.
- Devices and addresses one request at a time: they change rarely.

Errors: a failed entry change is returned as a :class:`Failure` for the caller to
judge (a missing entry on delete is harmless); a socket-level failure raises
:class:`NetlinkUnavailable`, transient; a device or address operation the kernel
refuses raises :class:`~pyflannel.errors.BackendError`.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface

from pyflannel.core.kernelstate import Change, FdbEntry, Neighbour, Route
from pyflannel.errors import BackendError
from pyflannel.netlink import rtnl
from pyflannel.netlink.rtnl import addrs, links
from pyflannel.netlink.rtnl.links import IFF_UP, Link, VxlanAttrs
from pyflannel.netlink.rtnl.transport import NetlinkRefused, NetlinkUnavailable, RtnlSocket

__all__ = ["Failure", "LinkState", "NetlinkOps", "NetlinkUnavailable", "VxlanAttrs", "link_state"]


@dataclass(frozen=True, slots=True)
class Failure:
    """A change the kernel refused, with the errno it gave."""

    change: Change
    code: int

    def __str__(self) -> str:
        name = errno.errorcode.get(self.code, str(self.code))
        return f"{self.change.op.value} {self.change.entry}: {name}"


@dataclass(frozen=True, slots=True)
class LinkState:
    """A network device as the kernel reports it."""

    index: int
    name: str
    kind: str  # "vxlan", "veth", ... ("" for devices without link info)
    mac: str
    mtu: int
    up: bool
    vxlan: VxlanAttrs | None = None


def link_state(link: Link) -> LinkState:
    """The parts of a decoded device that backends compare."""
    return LinkState(
        link.index, link.name, link.kind, link.mac, link.mtu, bool(link.flags & IFF_UP), link.vxlan
    )


class NetlinkOps:
    """A channel to rtnetlink: ``open()`` it (in the netns of the calling thread), then
    ``close()`` it at the end."""

    def __init__(self) -> None:
        self._rtnl = RtnlSocket()

    @property
    def port_id(self) -> int:
        """The socket's netlink port: notices caused by our own requests carry it."""
        return self._rtnl.port_id

    async def open(self) -> None:
        """Create the socket (idempotent)."""
        self._rtnl.open()

    async def close(self) -> None:
        """Close the socket; kernel state stays as it is."""
        self._rtnl.close()

    async def __aenter__(self) -> NetlinkOps:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def routes(self, *, oif: int | None = None, proto: int = 0) -> list[Route]:
        """Main-table IPv4 routes through device ``oif`` or with protocol ``proto``."""
        request = rtnl.route_dump(oif=oif, proto=proto)
        found = await self._rtnl.dump(request, rtnl.parse_route, rtnl.route_fingerprint)
        return [
            r for r in found if (oif is None or r.oif == oif) and (not proto or r.proto == proto)
        ]

    async def neighbours(self, ifindex: int) -> list[Neighbour]:
        """The IPv4 neighbour entries of one device."""
        request = rtnl.neighbour_dump(ifindex)
        found = await self._rtnl.dump(request, rtnl.parse_neighbour, rtnl.neighbour_fingerprint)
        return [n for n in found if n.ifindex == ifindex]

    async def fdb(self, ifindex: int) -> list[FdbEntry]:
        """The FDB entries (with an IPv4 remote) of one VXLAN device."""
        request = rtnl.fdb_dump(ifindex)
        found = await self._rtnl.dump(request, rtnl.parse_fdb, rtnl.fdb_fingerprint)
        return [f for f in found if f.ifindex == ifindex]

    async def execute(self, changes: Sequence[Change]) -> list[Failure]:
        """Carry out ``changes`` in order, in as few writes as possible; return the refusals."""
        refused = await self._rtnl.batch([rtnl.encode_change(change) for change in changes])
        return [Failure(changes[position], code) for position, code in refused]

    async def add_route(self, route: Route) -> None:
        """Create a route unless one for its prefix and metric exists (then: fine)."""
        await self._call(f"add route {route.dst}", rtnl.route_add(route), errno.EEXIST)

    async def link(self, name: str) -> LinkState | None:
        """The device called ``name``, or None when there is none."""
        try:
            answer = await self._rtnl.call(links.get_link(name=name))
        except NetlinkRefused as exc:
            if exc.code == errno.ENODEV:
                return None
            raise BackendError(f"cannot read device {name}: {exc}") from exc
        found = [links.parse_link(payload, 0, len(payload)) for payload in answer]
        link = next((link for link in found if link is not None), None)
        return link_state(link) if link is not None else None

    async def create_vxlan(self, name: str, attrs: VxlanAttrs, *, mac: str, mtu: int) -> None:
        """Create a VXLAN device (port 0 leaves the kernel's default, 8472)."""
        request = links.new_vxlan(name, attrs, mac=mac, mtu=mtu)
        await self._call(f"create device {name}", request)

    async def delete_link(self, index: int) -> None:
        """Delete a device; an already missing one is fine."""
        await self._call(f"delete device {index}", links.delete_link(index), errno.ENODEV)

    async def set_link(
        self,
        index: int,
        *,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool = False,
        gso_max_segs: int | None = None,
    ) -> None:
        """Change a device's MTU, MAC or GSO segment limit, and/or bring it up."""
        if mtu is None and mac is None and not up and gso_max_segs is None:
            return
        request = links.set_link(index, mtu=mtu, mac=mac, up=up, gso_max_segs=gso_max_segs)
        await self._call(f"configure device {index}", request)

    async def addresses(self, index: int) -> list[IPv4Interface]:
        """The IPv4 addresses of a device."""
        found = await self._rtnl.dump(addrs.address_dump(index), addrs.parse_address)
        return [address.interface for address in found if address.index == index]

    async def add_address(self, index: int, address: IPv4Interface) -> None:
        """Add an address to a device (present already: fine)."""
        request = addrs.new_address(index, address)
        await self._call(f"add address {address} to device {index}", request, errno.EEXIST)

    async def delete_address(self, index: int, address: IPv4Interface) -> None:
        """Remove an address from a device (absent already: fine)."""
        request = addrs.delete_address(index, address)
        await self._call(
            f"remove address {address} from {index}", request, errno.EADDRNOTAVAIL, errno.ENODEV
        )

    async def _call(self, what: str, request: rtnl.Request, *harmless: int) -> None:
        try:
            await self._rtnl.call(request)
        except NetlinkRefused as exc:
            if exc.code not in harmless:
                raise BackendError(f"cannot {what}: {exc}") from exc
