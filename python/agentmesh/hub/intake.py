"""Envelopes into the hub: accepting sends.

:class:`SendIntake` (one per connection) takes a registered agent's SEND: sequence order and
resends, the recipient's existence, the envelope header, the recipient's quotas (a full inbox
first loses its expired envelopes: ``hub/expiry.py``); then it hands the envelope to the store
and, if the recipient is online, to the recipient's pump at once (delivery before commit,
``docs/hub.md#durability``). :func:`commit_done` is the store's commit callback: the cumulative
SEND_ACK to each sender, and a wake-up for recipients that read from the store.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agentmesh.fanout import address
from agentmesh.hub.states import AGENT, LOOKUP
from agentmesh.hub_protocol import (
    ErrorCode,
    ProtocolError,
    decode_send,
    decode_send_expiring,
    decode_send_group,
    encode_send_error,
    encode_send_group_error,
)

if TYPE_CHECKING:
    from agentmesh.hub.connection import Connection
    from agentmesh.hub.core import AgentState, HubCore

__all__ = ["FanoutToken", "SendIntake", "commit_done"]

log = logging.getLogger("agentmesh.hub")


class SendIntake:
    """The sending side of one connection: which of its sends are seen, stored, acknowledged."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.hub = conn.hub
        self.limits = conn.limits
        self.uncommitted: deque[int] = deque()  # client seqs accepted, not yet committed
        self.uncommitted_bytes = 0
        self.last_seen_seq = 0
        self.last_ack_sent = 0
        self.dedup_floor = 0  # committed in an earlier connection of this client session
        #: the client seq of a send waiting for a purge (0: none): acknowledgements stop short
        #: of it until it is stored or refused
        self.held = 0

    def start(self, acked: int) -> None:
        """The connection registered; ``acked`` is what the hub committed of its session."""
        self.dedup_floor = acked
        self.last_seen_seq = acked
        self.last_ack_sent = acked

    def _admit(self, cseq: int) -> bool:
        """Whether the send numbered ``cseq`` is to be taken (False: answered already, or
        a resend of one committed in an earlier connection of this client session)."""
        conn = self.conn
        if conn.state != AGENT:
            if conn.state == LOOKUP:
                conn.write(
                    encode_send_error(
                        cseq,
                        ErrorCode.NOT_AUTHENTICATED,
                        "only registered agents may send envelopes",
                    )
                )
                return False
            raise ProtocolError(ErrorCode.PROTOCOL, "SEND before REGISTER")
        if cseq <= self.last_seen_seq:
            if cseq <= self.dedup_floor:
                # Already committed in an earlier connection of this client session.
                if not self.uncommitted:
                    conn.write_send_ack(self.last_seen_seq)
                return False
            raise ProtocolError(ErrorCode.PROTOCOL, "send sequence numbers must increase")
        self.last_seen_seq = cseq
        return True

    def _check_header(self, cseq: int, envelope: bytes, recipient: str) -> bool:
        """The envelope parses, its sender is this connection's agent and it is addressed to
        ``recipient``; otherwise the send is refused (False)."""
        crypto = self.hub.crypto
        if crypto is None:
            return True
        conn = self.conn
        try:
            # (a group message, type 0x03, has the same routing prefix: as_envelope reads it)
            env = crypto.as_envelope(envelope)
            sender, stated = env.sender, env.recipient
        except Exception as exc:
            self._reject(cseq, ErrorCode.BAD_ENVELOPE, f"malformed envelope: {exc}")
            return False
        if sender != conn.agent_id:
            self._reject(
                cseq,
                ErrorCode.ENVELOPE_MISMATCH,
                f"envelope sender {sender!r} is not the registered agent {conn.agent_id!r}",
            )
            return False
        if stated != recipient:
            self._reject(
                cseq,
                ErrorCode.ENVELOPE_MISMATCH,
                f"envelope is addressed to {stated!r}, not {recipient!r}",
            )
            return False
        return True

    def _inbox_full(self, ast: AgentState, size: int) -> bool:
        lim = self.limits
        return (
            ast.count >= lim.max_queued_per_agent
            or ast.bytes + size > lim.max_queued_bytes_per_agent
        )

    # A send that returns a coroutine holds its connection's later frames until it is done
    # (Connection._process): per-sender order holds while a full inbox is purged.

    def on_send(self, body: bytes, at: int = 0) -> Coroutine[Any, Any, None] | None:
        """The SEND whose body starts at ``at`` in ``body``."""
        cseq, recipient, envelope = decode_send(body, at)
        return self._accept(cseq, recipient, envelope, 0)

    def on_send_expiring(self, body: bytes) -> Coroutine[Any, Any, None] | None:
        cseq, expires_ms, recipient, envelope = decode_send_expiring(body)
        return self._accept(cseq, recipient, envelope, expires_ms)

    def _accept(
        self, cseq: int, recipient: str, envelope: bytes, expires_ms: int
    ) -> Coroutine[Any, Any, None] | None:
        """Take one envelope for ``recipient`` (``expires_ms``: never delivered after it,
        ms since the epoch; 0: no expiry). One that has expired already is stored and
        acknowledged like the others, and dropped when its turn to be delivered comes. For a
        full inbox holding envelopes whose expiry has passed: a coroutine that purges them
        first (``agentmesh.hub.expiry``)."""
        if not self._admit(cseq):
            return None
        ast = self.hub.agents.get(recipient)
        if ast is None:
            self._reject(cseq, ErrorCode.PEER_NOT_FOUND, f"Peer {recipient!r} not found on hub")
            return None
        if not self._check_header(cseq, envelope, recipient):
            return None
        if self._inbox_full(ast, len(envelope)):
            if self.hub.expiry.can_help(recipient, ast):
                self.held = cseq  # (from now: a commit may come before the coroutine runs)
                return self._accept_after_purge(cseq, recipient, envelope, expires_ms, ast)
            self._reject_full(cseq, recipient, ast)
            return None
        self._store(cseq, recipient, envelope, expires_ms, ast)
        return None

    async def _accept_after_purge(
        self, cseq: int, recipient: str, envelope: bytes, expires_ms: int, ast: AgentState
    ) -> None:
        size = len(envelope)
        try:
            await self.hub.expiry.make_room(recipient, ast, lambda: self._inbox_full(ast, size))
        finally:
            self.held = 0
        if self.conn.state != AGENT:
            return  # (never acknowledged: the client sends it again)
        if self._inbox_full(ast, size):
            self._reject_full(cseq, recipient, ast)
        else:
            self._store(cseq, recipient, envelope, expires_ms, ast)

    def _reject_full(self, cseq: int, recipient: str, ast: AgentState) -> None:
        why = f"inbox full: {recipient!r} has {ast.count} envelopes queued"
        self._reject(cseq, ErrorCode.INBOX_FULL, why)

    def _store(
        self, cseq: int, recipient: str, envelope: bytes, expires_ms: int, ast: AgentState
    ) -> None:
        size = len(envelope)
        conn = self.conn
        store = self.hub.store
        hseq, early = store.next_seq()
        ast.count += 1
        ast.bytes += size
        ast.uncommitted += 1
        ast.puts += 1
        store.put(recipient, hseq, envelope, (self, cseq, size, ast), expires_ms)
        if expires_ms:
            self.hub.expiry.note(recipient, ast, expires_ms)
        store.note_progress(conn.agent_id, conn.session, cseq)  # type: ignore[arg-type]
        self._note_uncommitted(cseq, size)
        _offer(ast, hseq, envelope, early, expires_ms)

    def _note_uncommitted(self, cseq: int, size: int) -> None:
        self.uncommitted.append(cseq)
        self.uncommitted_bytes += size
        if self.uncommitted_bytes > self.limits.max_uncommitted_bytes:
            self.conn.pause("commit")

    def on_send_group(self, body: bytes) -> Coroutine[Any, Any, None] | None:
        """One group message for many recipients (SEND_GROUP): checked once, a copy
        addressed to each member (``fanout.address``) stored for each in one commit, and
        acknowledged (SEND_ACK) once every copy is durable. A member unknown or with a full
        inbox gets a SEND_GROUP_ERROR naming it; the others' copies are stored all the
        same. Members' full inboxes holding expired envelopes are purged first (a
        coroutine, as for a SEND)."""
        cseq, recipients, data = decode_send_group(body)
        if not self._admit(cseq):
            return None
        encoded = [r.encode("utf-8") for r in recipients]
        try:
            first = address(data, recipients[0])
        except ValueError as exc:
            self._reject(cseq, ErrorCode.BAD_ENVELOPE, f"malformed group message: {exc}")
            return None
        if not self._check_header(cseq, first, recipients[0]):
            return None
        extra = len(data) + 1
        total = sum(extra + len(rb) for rb in encoded)
        lim = self.limits
        if total > lim.max_fanout_bytes:
            why = (
                "this hub takes no SEND_GROUP (max_fanout_bytes is 0; its READY does not "
                "offer fan-out): send each member's copy"
                if not lim.max_fanout_bytes
                else f"fan-out of {len(recipients)} copies of {len(data)} bytes ({total} bytes "
                f"in all) exceeds the hub's limit of {lim.max_fanout_bytes} bytes per SEND_GROUP"
            )
            self._reject(cseq, ErrorCode.FRAME_TOO_LARGE, why)
            return None
        agents = self.hub.agents
        expiry = self.hub.expiry
        purgeable = []
        for recipient, rb in zip(recipients, encoded, strict=True):
            ast = agents.get(recipient)
            if (
                ast is not None
                and self._inbox_full(ast, extra + len(rb))
                and expiry.can_help(recipient, ast)
            ):
                purgeable.append((recipient, ast, extra + len(rb)))
        if purgeable:
            store_group = functools.partial(
                self._store_group, cseq, recipients, encoded, data, first, extra
            )
            self.held = cseq
            return self._group_after_purge(purgeable, store_group)
        self._store_group(cseq, recipients, encoded, data, first, extra)
        return None

    async def _group_after_purge(
        self, purgeable: list[tuple[str, AgentState, int]], store_group: Callable[[], None]
    ) -> None:
        expiry = self.hub.expiry
        full = self._inbox_full
        try:
            # (one member after another: a commit carries at most one purge of this send's)
            for recipient, ast, size in purgeable:
                await expiry.make_room(recipient, ast, functools.partial(full, ast, size))
        finally:
            self.held = 0
        if self.conn.state == AGENT:
            store_group()

    def _store_group(
        self,
        cseq: int,
        recipients: list[str],
        encoded: list[bytes],
        data: bytes,
        first: bytes,
        extra: int,
    ) -> None:
        conn = self.conn
        hub = self.hub
        store = hub.store
        rows: list[tuple[int, str, bytes]] = []
        offers: list[tuple[AgentState, int, bytes, bool]] = []
        taken: list[AgentState] = []
        size = 0
        for recipient, rb in zip(recipients, encoded, strict=True):
            ast = hub.agents.get(recipient)
            copy_size = extra + len(rb)
            if ast is None:
                why = f"Peer {recipient!r} not found on hub"
                self._refuse_member(cseq, recipient, ErrorCode.PEER_NOT_FOUND, why)
                continue
            if self._inbox_full(ast, copy_size):
                self._refuse_member(
                    cseq,
                    recipient,
                    ErrorCode.INBOX_FULL,
                    f"inbox full: {recipient!r} has {ast.count} envelopes queued",
                )
                continue
            try:  # (before any count moves: a member that cannot be addressed is refused alone)
                copy = first if recipient == recipients[0] else address(data, recipient)
            except ValueError as exc:
                self._refuse_member(cseq, recipient, ErrorCode.BAD_REQUEST, str(exc))
                continue
            hseq, early = store.next_seq()
            ast.count += 1
            ast.bytes += copy_size
            ast.uncommitted += 1
            ast.puts += 1
            rows.append((hseq, recipient, copy))
            offers.append((ast, hseq, copy, early))
            taken.append(ast)
            size += copy_size
        if not rows:
            if not self.uncommitted and cseq > self.last_ack_sent:
                self.last_ack_sent = cseq
                conn.write_send_ack(cseq)
            return
        store.put_many(rows, FanoutToken(self, cseq, size, taken))
        store.note_progress(conn.agent_id, conn.session, cseq)  # type: ignore[arg-type]
        self._note_uncommitted(cseq, size)
        for ast, hseq, copy, early in offers:
            _offer(ast, hseq, copy, early)

    def _refuse_member(self, cseq: int, recipient: str, code: ErrorCode, message: str) -> None:
        conn = self.conn
        log.debug("send %d from %r refused for %r: %s", cseq, conn.agent_id, recipient, message)
        conn.hub.stats.refuse(code.name.lower())
        conn.write(encode_send_group_error(cseq, code, recipient, message))

    def _reject(self, cseq: int, code: ErrorCode, message: str) -> None:
        conn = self.conn
        log.debug("send %d from %r refused: %s", cseq, conn.agent_id, message)
        conn.hub.stats.refuse(code.name.lower())
        conn.write(encode_send_error(cseq, code, message))
        if not self.uncommitted and cseq > self.last_ack_sent:
            self.last_ack_sent = cseq
            conn.write_send_ack(cseq)


def _offer(ast: AgentState, hseq: int, envelope: bytes, early: bool, expires_ms: int = 0) -> None:
    """Hand a new envelope to its recipient's pump at once when it is online and live."""
    rc = ast.conn
    if rc is not None:
        pump = rc.pump
        if not pump.db_mode:
            if early:
                pump.offer(hseq, envelope, expires_ms)
            else:
                pump.enter_db_mode()


class FanoutToken:
    """The store token of one SEND_GROUP: its copies commit together, acknowledged once."""

    __slots__ = ("cseq", "intake", "recipients", "size")

    def __init__(
        self, intake: SendIntake, cseq: int, size: int, recipients: list[AgentState]
    ) -> None:
        self.intake = intake
        self.cseq = cseq
        self.size = size  # the copies' bytes, in all
        self.recipients = recipients


def commit_done(hub: HubCore, tokens: list[Any]) -> None:
    """The store committed the ``put`` s with these tokens: acknowledge their senders
    (cumulatively, per connection), let senders over their uncommitted bytes read again, and
    wake the recipients that read from the store."""
    touched: dict[SendIntake, int] = {}
    recipients: set[AgentState] = set()
    stats = hub.stats
    stats.accepted += len(tokens)
    for token in tokens:
        if type(token) is FanoutToken:
            intake, cseq, size = token.intake, token.cseq, token.size
            copies = len(token.recipients)
            stats.accepted += copies - 1
            stats.fanout_uploads += 1
            stats.fanout_copies += copies
            for ast in token.recipients:
                ast.uncommitted -= 1
                recipients.add(ast)
        else:
            intake, cseq, size, ast = token
            ast.uncommitted -= 1
            recipients.add(ast)
        stats.accepted_bytes += size
        intake.uncommitted.popleft()
        intake.uncommitted_bytes -= size
        touched[intake] = cseq
    # (once per sender per commit: with hundreds of agents on a connection, each sending a
    # message or two per commit, this loop runs about as often as the one above)
    max_uncommitted = hub.limits.max_uncommitted_bytes
    progress = hub.progress
    for intake, cseq in touched.items():
        conn = intake.conn
        agent_id = conn.agent_id
        if agent_id is not None:
            progress[agent_id] = (conn.session, cseq)
        if conn.state != AGENT:
            continue
        waiting = intake.uncommitted
        ack = waiting[0] - 1 if waiting else intake.last_seen_seq
        if intake.held and ack >= intake.held:
            ack = intake.held - 1  # (seen, but waiting for a purge: not stored yet)
        if ack > intake.last_ack_sent:
            intake.last_ack_sent = ack
            conn.write_send_ack(ack)
        if conn.paused_by and intake.uncommitted_bytes <= max_uncommitted:
            conn.resume("commit")
    for ast in recipients:
        rc = ast.conn
        if rc is not None and rc.pump.db_mode:
            rc.pump.schedule_fetch()
