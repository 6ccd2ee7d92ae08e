"""The state every connection of one running hub shares, in the hub's event loop thread.

:class:`HubCore` holds the store, the limits, the known agents (:class:`AgentState`: queue
size and current delivery connection of each), the senders' committed progress, and the
hub-wide collaborators: the :class:`~agentmesh.hub.connection_table.ConnectionTable`, the
:class:`~agentmesh.hub.output.OutputQueue`, the
:class:`~agentmesh.hub.registration.Registrar` and the
:class:`~agentmesh.hub.requests.Directory`. It runs the housekeeping clock and the orderly
shutdown, and the background purge of expired envelopes (:mod:`agentmesh.hub.expiry`).
Connections (:class:`~agentmesh.hub.connection.Connection`) are made with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from agentmesh.hub.connection_table import ConnectionTable
from agentmesh.hub.expiry import ExpiryPurger
from agentmesh.hub.intake import commit_done
from agentmesh.hub.limits import HubLimits
from agentmesh.hub.output import OutputQueue
from agentmesh.hub.registration import Registrar
from agentmesh.hub.requests import Directory
from agentmesh.hub_protocol import ErrorCode, FrameType, encode_frame
from agentmesh.hub_store import HubBackend, StoreState

if TYPE_CHECKING:
    from agentmesh.hub.connection import Connection

__all__ = ["AgentState", "HubCore", "HubStats"]


class HubStats:
    """What the hub counts for its metrics: cheap increments on the event loop, read by the
    metrics endpoint when it is scraped (``agentmesh.hub.metrics``)."""

    def __init__(self) -> None:
        self.accepted = 0  # envelopes committed to the store (a fan-out's copies each)
        self.fanout_uploads = 0  # SEND_GROUP frames committed (one per group message)
        self.fanout_copies = 0  # the copies they stored (one per member)
        self.accepted_bytes = 0
        self.delivered = 0  # deliveries acknowledged by their recipients
        self.delivered_bytes = 0
        self.expired = 0  # envelopes dropped undelivered: their sender's expiry passed
        self.refused: dict[str, int] = {}  # SEND_ERROR reason -> how many

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class AgentState:
    """Per known agent: its queue size and its current delivery connection."""

    __slots__ = ("bytes", "conn", "count", "next_expiry", "puts", "uncommitted")

    def __init__(self, count: int = 0, nbytes: int = 0) -> None:
        self.count = count  # queued, unacknowledged envelopes
        self.bytes = nbytes
        self.uncommitted = 0  # accepted, not yet committed
        self.puts = 0  # envelopes ever accepted in this run (change detector)
        #: at most the earliest expiry (ms since the epoch) among the queued envelopes; 0: none
        #: carries one (agentmesh.hub.expiry)
        self.next_expiry = 0
        self.conn: Connection | None = None


class HubCore:
    """Routing core; lives in the event loop thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: HubBackend,
        state: StoreState,
        limits: HubLimits,
        crypto: ModuleType | None,
        on_fatal: Callable[[BaseException], None],
        tls_cert_sha256: bytes | None = None,
    ) -> None:
        self.loop = loop
        self.store = store
        self.limits = limits
        self.crypto = crypto
        self.hub_id = state.hub_id
        #: SHA-256 of the certificate clients see (None without TLS): registration proofs are
        #: bound to it.
        self.tls_cert_sha256 = tls_cert_sha256
        self.agents: dict[str, AgentState] = {a: AgentState() for a in state.agents}
        for rcpt, (n, b) in state.queues.items():
            st = self.agents.setdefault(rcpt, AgentState())
            st.count, st.bytes = n, b
        self.expiry = ExpiryPurger(self)
        for rcpt, expires_ms in state.expiries.items():
            self.expiry.note(rcpt, self.agents.setdefault(rcpt, AgentState()), expires_ms)
        #: Per sender id: (client session, last client seq committed) of this run.
        self.progress: dict[str, tuple[bytes, int]] = {}
        self.connections = ConnectionTable(limits)
        self.output = OutputQueue(loop)
        self.directory = Directory(loop, limits, self.agents)
        self.registrar = Registrar(self)
        self.stats = HubStats()
        store.on_commit = functools.partial(commit_done, self)
        store.on_fatal = on_fatal
        self._housekeeper: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def add_agent(self, agent_id: str) -> AgentState:
        ast = self.agents.get(agent_id)
        if ast is None:
            ast = self.agents[agent_id] = AgentState()
            self.directory.added(agent_id)
        return ast

    # ---- housekeeping --------------------------------------------------------------------

    def start_housekeeping(self) -> None:
        self._housekeeper = self.loop.create_task(self._housekeeping())
        if self.limits.expired_sweep_interval:
            sweep = self.expiry.sweep_forever(self.limits.expired_sweep_interval)
            self._sweeper = self.loop.create_task(sweep)

    async def _housekeeping(self) -> None:
        lim = self.limits
        tick = max(0.05, min(1.0, lim.ping_interval / 4, lim.handshake_timeout / 4))
        ping = encode_frame(FrameType.PING)
        swept = self.loop.time()
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            if now - swept >= 60.0:
                swept = now
                self.directory.forget_old_claims(now)
            self.connections.check_clocks(now, ping)

    async def shutdown(self) -> None:
        table = self.connections
        table.closing = True
        for task in (self._housekeeper, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for c in list(table.conns):
            c.pause("shutdown")
        # Everything accepted gets committed and acknowledged before the connections close.
        with contextlib.suppress(Exception):
            await self.store.barrier()
        for c in list(table.conns):
            c.fail(ErrorCode.SHUTTING_DOWN, "hub is shutting down", level=logging.DEBUG)
        for _ in range(50):
            if not table.conns:
                break
            await asyncio.sleep(0.02)
        for c in list(table.conns):
            c.abort()
