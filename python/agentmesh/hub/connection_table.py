"""The open connections of one hub, and the caps and clocks that keep them bounded.

:class:`ConnectionTable` decides whether a new connection may stay (``max_connections``,
``max_handshaking``, ``max_unauthenticated_per_address``) and whether one more LOOKUP may
(``max_lookup_connections``), keeps the unauthenticated counts (globally and per address) as
connections move from handshake to lookup or agent, closes handshakes and idle connections
past their timeouts and pings silent ones, and reports the counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmesh.hub.limits import HubLimits
from agentmesh.hub.states import AGENT, LOOKUP
from agentmesh.hub_protocol import ErrorCode

if TYPE_CHECKING:
    from agentmesh.hub.connection import Connection

__all__ = ["ConnectionTable"]


class ConnectionTable:
    """Every open connection, counted by kind."""

    def __init__(self, limits: HubLimits) -> None:
        self.limits = limits
        self.conns: set[Connection] = set()
        # unauthenticated connections: "handshake" and "lookup" counts, and per address
        self.unauth = {"handshake": 0, "lookup": 0}
        self.unauth_by_addr: dict[str, int] = {}
        #: Set at shutdown: new connections are refused with SHUTTING_DOWN.
        self.closing = False

    def __len__(self) -> int:
        return len(self.conns)

    def refusal(self, addr: str) -> str | None:
        """Why a new connection from ``addr`` may not stay, if it may not."""
        lim = self.limits
        if len(self.conns) >= lim.max_connections:
            return f"too many connections ({len(self.conns)} open)"
        if self.unauth["handshake"] >= lim.max_handshaking:
            return "too many connections in their handshake"
        if self.unauth_by_addr.get(addr, 0) >= lim.max_unauthenticated_per_address:
            return "too many unauthenticated connections from this address"
        return None

    def lookup_full(self) -> bool:
        return self.unauth["lookup"] >= self.limits.max_lookup_connections

    def add(self, conn: Connection) -> None:
        self.conns.add(conn)
        self.count_as(conn, "handshake")

    def discard(self, conn: Connection) -> None:
        self.conns.discard(conn)
        self.count_as(conn, None)

    def count_as(self, conn: Connection, kind: str | None) -> None:
        """Moves ``conn`` between the unauthenticated counts (``None``: an agent, or gone)."""
        old = conn.unauth
        if old == kind:
            return
        by_addr = self.unauth_by_addr
        if old is not None:
            self.unauth[old] -= 1
            left = by_addr.get(conn.addr, 1) - 1
            if left > 0:
                by_addr[conn.addr] = left
            else:
                by_addr.pop(conn.addr, None)
        if kind is not None:
            self.unauth[kind] += 1
            by_addr[conn.addr] = by_addr.get(conn.addr, 0) + 1
        conn.unauth = kind

    def check_clocks(self, now: float, ping: bytes) -> None:
        """Handshake and idle timeouts, and pings for connections silent for a ping interval."""
        lim = self.limits
        for c in list(self.conns):
            if c.state < LOOKUP:
                if now - c.opened > lim.handshake_timeout:
                    c.fail(ErrorCode.HANDSHAKE_TIMEOUT, "handshake timed out")
            elif c.state <= AGENT:
                idle = now - c.last_rx
                if idle > lim.idle_timeout:
                    c.fail(ErrorCode.IDLE_TIMEOUT, f"idle for more than {lim.idle_timeout:g}s")
                elif idle >= lim.ping_interval and now - c.last_ping >= lim.ping_interval:
                    c.last_ping = now
                    c.write(ping)

    def stats(self) -> dict[str, Any]:
        unauth = sum(self.unauth.values())
        return {
            "total": len(self.conns),
            "handshaking": self.unauth["handshake"],
            "lookup": self.unauth["lookup"],
            "agents": len(self.conns) - unauth,
            "unauthenticated_addresses": len(self.unauth_by_addr),
        }
