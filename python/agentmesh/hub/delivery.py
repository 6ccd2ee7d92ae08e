"""Envelopes out of the hub: :class:`DeliveryPump` (one per connection) sends DELIVER frames
within the delivery window: live from memory while it keeps up, from the store when it is
behind (``db_mode``), and takes the DELIVERY_ACKs that delete them. (Sends come in through
``hub/intake.py``.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from agentmesh.hub.states import AGENT
from agentmesh.hub_protocol import (
    ErrorCode,
    ProtocolError,
    iter_acks,
)

if TYPE_CHECKING:
    from agentmesh.hub.connection import Connection

__all__ = ["DeliveryPump"]

log = logging.getLogger("agentmesh.hub")


def _expired(expires_ms: int) -> bool:
    return expires_ms != 0 and expires_ms <= time.time() * 1000


class DeliveryPump:
    """The delivering side of one (agent) connection: DELIVER frames within the window, from
    memory or from the store, and the acknowledgements that delete them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.limits = conn.limits
        self.store = conn.hub.store
        self.inflight: dict[int, int] = {}  # delivery id -> size, sent and not acknowledged
        # live envelopes beyond the window: (delivery id, envelope, expiry or 0)
        self.mem: deque[tuple[int, bytes, int]] = deque()
        self.cursor = 0  # the last delivery id sent
        self.db_mode = False  # reading from the store (behind, or catching up after REGISTER)
        self.fetching = False
        self.refetch = False

    def start(self) -> None:
        """The connection registered: deliver everything queued, from the store, then switch
        to live delivery."""
        self.cursor = 0
        self.db_mode = True
        self.schedule_fetch()

    def clear(self) -> None:
        self.inflight.clear()
        self.mem.clear()

    def offer(self, hseq: int, envelope: bytes, expires_ms: int = 0) -> None:
        """A new envelope for this (online, live-mode) recipient."""
        if (
            not self.mem
            and not self.conn.sink.write_paused
            and len(self.inflight) < self.limits.delivery_window
        ):
            self.cursor = hseq
            if expires_ms and _expired(expires_ms):
                self._drop_expired(hseq, len(envelope))
                return
            self.inflight[hseq] = len(envelope)
            self.conn.write_deliver(hseq, envelope)
            return
        self.mem.append((hseq, envelope, expires_ms))
        if len(self.mem) > self.limits.delivery_buffer:
            self.enter_db_mode()

    def enter_db_mode(self) -> None:
        # The envelopes in memory are (or will be) in the store: read them back from there.
        self.mem.clear()
        self.db_mode = True

    def refill(self) -> None:
        window = self.limits.delivery_window
        inflight = self.inflight
        mem = self.mem
        conn = self.conn
        sink = conn.sink
        while mem and len(inflight) < window and not sink.write_paused:
            hseq, env, expires_ms = mem.popleft()
            self.cursor = hseq
            if expires_ms and _expired(expires_ms):
                self._drop_expired(hseq, len(env))
                continue
            inflight[hseq] = len(env)
            conn.write_deliver(hseq, env)
        if self.db_mode and len(inflight) < window and not sink.write_paused:
            self.schedule_fetch()

    def schedule_fetch(self) -> None:
        if self.conn.state != AGENT:
            return
        if self.fetching:
            self.refetch = True
            return
        self.fetching = True
        self.conn.loop.create_task(self._fetch())

    async def _fetch(self) -> None:
        conn = self.conn
        try:
            while True:
                self.refetch = False
                await self._fetch_once()
                if not self.refetch or conn.state != AGENT:
                    break
        except Exception:
            log.exception("reading the inbox of %r failed", conn.agent_id)
            conn.fail(ErrorCode.INTERNAL, "hub store read failed")
        finally:
            self.fetching = False

    async def _fetch_once(self) -> None:
        conn = self.conn
        ast = conn.agent
        agent_id = conn.agent_id
        assert ast is not None and agent_id is not None
        window = self.limits.delivery_window
        store = self.store
        while self.db_mode and conn.state == AGENT and not conn.write_paused:
            room = window - len(self.inflight)
            if room <= 0:
                return
            want = min(room, 512)
            puts_before = ast.puts
            rows = await store.fetch(agent_id, self.cursor, want)
            if conn.state != AGENT or ast.conn is not conn:
                return
            now_ms = time.time() * 1000
            for hseq, env, expires_ms in rows:
                if hseq > self.cursor:
                    self.cursor = hseq
                    if expires_ms and expires_ms <= now_ms:
                        self._drop_expired(hseq, len(env))
                        continue
                    self.inflight[hseq] = len(env)
                    conn.write_deliver(hseq, env)
            if len(rows) < want:
                # Caught up with the store. Live delivery may resume if nothing accepted for
                # this recipient is still waiting for its commit (else the commit re-pumps).
                if ast.uncommitted == 0 and ast.puts == puts_before:
                    self.db_mode = False
                return

    def _drop_expired(self, hseq: int, size: int) -> None:
        """An envelope whose sender's expiry has passed: deleted, never delivered."""
        conn = self.conn
        ast = conn.agent
        assert ast is not None and conn.agent_id is not None
        ast.count -= 1
        ast.bytes -= size
        conn.hub.stats.expired += 1
        self.store.ack(conn.agent_id, hseq)

    def on_acks(self, body: bytes) -> None:
        ids = iter_acks(body)
        conn = self.conn
        if conn.state != AGENT:
            raise ProtocolError(ErrorCode.PROTOCOL, "DELIVERY_ACK before REGISTER")
        ast = conn.agent
        agent_id = conn.agent_id
        assert ast is not None and agent_id is not None
        inflight = self.inflight
        acked: list[int] = []
        nbytes = 0
        for i in ids:
            size = inflight.pop(i, None)
            if size is None:
                continue  # unknown or already acknowledged: ignore
            acked.append(i)
            nbytes += size
        if acked:
            ast.count -= len(acked)
            ast.bytes -= nbytes
            stats = conn.hub.stats
            stats.delivered += len(acked)
            stats.delivered_bytes += nbytes
            self.store.ack_many(agent_id, acked)
        if self.mem or self.db_mode:
            self.refill()
