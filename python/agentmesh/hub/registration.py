"""Registration: a connection proves possession of an identity key and becomes that agent's.

:class:`Registrar` (one per hub) answers a HELLO with a single-use challenge, checks a REGISTER
against the challenge its connection was sent (bundle self-signature, agent id, registration
proof bound to this hub's id and TLS certificate), refuses an older signed prekey than the one
served, binds the id to its identity key in the store (first key wins), replaces an earlier
connection of the same agent, and turns the connection into an agent connection: READY, then
the queued envelopes.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from agentmesh.fanout import MAX_FANOUT_RECIPIENTS
from agentmesh.hub.states import AGENT, AWAIT_AUTH, CLOSING
from agentmesh.hub_protocol import (
    CHALLENGE_SIZE,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    Welcome,
    check_agent_id,
    decode_hello,
    decode_register,
    encode_welcome,
)
from agentmesh.succession import succession_problem

if TYPE_CHECKING:
    from agentmesh.hub.connection import Connection
    from agentmesh.hub.core import HubCore

__all__ = ["Registrar", "older_bundle"]

log = logging.getLogger("agentmesh.hub")

_SIGNED_FIELDS = ("identity_key", "exchange_key", "signed_prekey_id", "signed_prekey")


def older_bundle(current: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """What is wrong with replacing ``current`` (served now) by ``new`` (both verified), if
    anything. Signed prekey ids only grow: an older bundle replayed into a registration or an
    update would make the hub serve a key the agent has deleted. A bundle of another identity
    key is left to the binding check (ID_TAKEN)."""
    if current is None or current.get("identity_key") != new.get("identity_key"):
        return None
    if all(current.get(f) == new.get(f) for f in _SIGNED_FIELDS):
        return None
    new_id, old_id = new.get("signed_prekey_id"), current.get("signed_prekey_id")
    if isinstance(new_id, int) and isinstance(old_id, int) and new_id > old_id:
        return None
    return (
        f"the bundle's signed prekey (id {new_id}) is not newer than the one the hub serves "
        f"(id {old_id})"
    )


class Registrar:
    """Checks registrations and makes connections agent connections."""

    def __init__(self, hub: HubCore) -> None:
        self.hub = hub

    def welcome(self, conn: Connection, hello: bytes) -> None:
        """HELLO -> WELCOME with a fresh single-use challenge (the one :meth:`register` checks
        the proof against)."""
        version = decode_hello(hello)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"hub speaks protocol version {PROTOCOL_VERSION}, client sent {version}",
            )
        conn.challenge = os.urandom(CHALLENGE_SIZE)
        lim = self.hub.limits
        conn.write(
            encode_welcome(
                Welcome(
                    PROTOCOL_VERSION,
                    conn.challenge,
                    self.hub.hub_id,
                    lim.max_frame_size,
                    lim.ping_interval,
                    lim.delivery_window,
                )
            )
        )
        conn.state = AWAIT_AUTH

    async def _rebind_if_succeeded(
        self, agent_id: str, current: dict[str, Any] | None, bundle: dict[str, Any]
    ) -> str:
        """A bundle of another identity key than the bound one re-binds the id only with
        succession statements that carry it from the bound key (the hub itself cannot move an
        id: the statements are the bound key's signature). Returns why it was refused ("" when
        there was nothing to do or it was re-bound)."""
        bound = current.get("identity_key") if current is not None else None
        new = bundle.get("identity_key")
        if not isinstance(bound, str) or bound == new or "succession" not in bundle:
            return ""
        problem = succession_problem(agent_id, bound, bundle)
        if problem is not None:
            return problem
        assert isinstance(new, str)
        if not await self.hub.store.rebind_agent(agent_id, bound, new, bundle):
            return "the id was re-bound meanwhile"
        log.info("agent id %r moved to a new identity key (succession statements)", agent_id)
        return ""

    async def register(self, conn: Connection, body: bytes) -> None:
        """Handles one REGISTER frame of ``conn`` (later frames wait until it is done)."""
        signature, session, client_nonce, bundle = decode_register(body)
        challenge = conn.challenge
        conn.challenge = None
        if challenge is None:
            raise ProtocolError(ErrorCode.PROTOCOL, "challenge already used")
        hub = self.hub
        crypto = hub.crypto
        if crypto is None:
            raise ProtocolError(ErrorCode.INTERNAL, "hub has no crypto module")
        try:
            agent_id = crypto.verify_bundle(bundle)
        except Exception as exc:
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, f"invalid bundle: {exc}") from None
        try:
            check_agent_id(agent_id)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, f"invalid agent id: {exc}") from None
        try:
            ok = bool(
                crypto.verify_registration(
                    bundle, signature, hub.hub_id, challenge, client_nonce, hub.tls_cert_sha256
                )
            )
        except Exception:
            ok = False
        if not ok:
            log.warning("registration of %r from %s: bad registration proof", agent_id, conn.peer)
            raise ProtocolError(
                ErrorCode.BAD_REGISTRATION,
                "registration signature does not verify for this bundle, hub, challenge, nonce "
                "and TLS certificate",
            )
        identity_key = bundle.get("identity_key")
        if not isinstance(identity_key, str):
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, "bundle has no identity_key")
        bundle.pop("one_time_prekey", None)
        current = await hub.store.get_bundle(agent_id)
        problem = older_bundle(current, bundle)
        if conn.state >= CLOSING:
            return
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, problem)
        limits = hub.limits
        if agent_id not in hub.agents and len(hub.agents) >= limits.max_agents:
            raise ProtocolError(ErrorCode.TOO_MANY_AGENTS, "the hub's directory is full")
        refusal = await self._rebind_if_succeeded(agent_id, current, bundle)
        if conn.state >= CLOSING:
            return
        result = await hub.store.bind_agent(agent_id, identity_key, bundle, session)
        if conn.state >= CLOSING:
            return
        if not result.ok:
            log.warning(
                "refused %s: agent id %r is bound to another identity key%s",
                conn.peer,
                agent_id,
                f" ({refusal})" if refusal else "",
            )
            raise ProtocolError(
                ErrorCode.ID_TAKEN,
                f"agent id {agent_id!r} is registered with another identity key"
                + (f"; its succession statements are refused: {refusal}" if refusal else ""),
            )
        ast = hub.add_agent(agent_id)
        old = ast.conn
        if old is not None and old is not conn:
            ast.conn = None
            old.fail(
                ErrorCode.REPLACED,
                f"agent {agent_id!r} registered again on another connection",
                level=logging.INFO,
            )
            # Every send the old connection had accepted is committed after this barrier.
            await hub.store.barrier()
            if conn.state >= CLOSING:
                return
        prog = hub.progress.get(agent_id)
        # Progress of this run (in memory) is newer than what the store knew at bind time.
        acked = result.acked_seq if prog is None else (prog[1] if prog[0] == session else 0)
        conn.agent_id = agent_id
        conn.agent = ast
        conn.session = session
        conn.intake.start(acked)
        conn.state = AGENT
        conn.became_agent()
        ast.conn = conn
        ready: dict[str, object] = {
            "mode": "agent",
            "agent_id": agent_id,
            "acked_seq": acked,
            "queued": ast.count,
            "next_seq": hub.store.peek_next_seq(),
            "prekeys": hub.store.prekey_count(agent_id),
            "prekey_limit": limits.max_prekeys_per_agent,
            # it takes SEND_EXPIRING (and drops what expired before delivering it)
            "expiry": True,
        }
        if limits.max_fanout_bytes:
            # it takes SEND_GROUP, with up to this many recipients and bytes of copies
            ready["fanout"] = MAX_FANOUT_RECIPIENTS
            ready["fanout_bytes"] = limits.max_fanout_bytes
        conn.ready(ready)
        log.info(
            "agent %r registered from %s (%s, %d queued)",
            agent_id,
            conn.peer,
            "new" if result.created else "known",
            ast.count,
        )
        conn.pump.start()
