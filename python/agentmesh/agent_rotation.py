"""Moving an agent to a new identity key (``rotate_identity``): the old key signs a succession
statement for the new one (docs/protocol.md, "Succession statement"), the keystore switches in
a crash-safe order (``keystore_rotation``), the hub re-binds the id on the statement's
strength, and the new bundle carries the statements so that peers follow without the
identity-changed error.

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

import contextlib

from . import crypto as _crypto
from ._native import MAX_SUCCESSION_CHAIN, sign_succession, verify_succession
from .agent_group_state import GroupState
from .agent_rules import RETIRED_GRACE_MS, _now_ms
from .errors import IdentityRotationError
from .keystore import PersistedState
from .keystore_rotation import commit_rotation


class _Rotation(GroupState):
    """Identity rotation (see the module)."""

    def _refuse_rotation(self) -> None:
        """Why this agent cannot rotate now, as IdentityRotationError (before any change)."""
        me = self.agent_id
        if self.closed:
            raise IdentityRotationError(f"agent {me!r} is closed")
        hub = self.hub
        if hub is not None and not getattr(hub, "rotates_identities", False):
            why = getattr(hub, "rotation_refused_because", "") or "LocalHub and NetworkHub can"
            raise IdentityRotationError(
                f"{type(hub).__name__} cannot move agent id {me!r} to a new identity key "
                f"({why}); nothing was changed"
            )
        if self._groups:
            raise IdentityRotationError(
                f"agent {me!r} is a member of groups ({', '.join(sorted(self._groups))}), "
                "whose records name its identity key: leave them before rotating"
            )
        receiver = getattr(self._transport, "receiver", None)
        if receiver is not None and receiver.draining_here():
            raise IdentityRotationError(
                "rotate_identity() cannot run inside one of this agent's own handlers"
            )

    def rotate_identity(self) -> str:
        """Move this agent to a new identity key signed over by the current one; returns the
        new fingerprint. See docs/agents.md ("Rotating the identity key")."""
        # two rotations at once would both sign from the same old key: a forked chain, the hub
        # binding one successor while the agent keeps the other
        if not self._rotation_lock.acquire(blocking=False):
            raise IdentityRotationError(
                f"another rotate_identity() of agent {self.agent_id!r} is in progress; "
                "nothing was changed"
            )
        try:
            return self._rotate_identity_locked()
        finally:
            self._rotation_lock.release()

    def _rotate_identity_locked(self) -> str:
        self._refuse_rotation()
        self.flush()  # every send is with the hub and the state is on disk
        if self._unhandled:
            raise IdentityRotationError("messages are still being handled; try again")
        old = self.keypair
        chain = list(old.succession())
        generation = int(verify_succession(chain[-1])["generation"]) + 1 if chain else 1
        new = _crypto.AgentKeyPair.generate(self.agent_id)
        chain.append(sign_succession(old, new, generation, _now_ms()))
        chain = chain[-MAX_SUCCESSION_CHAIN:]
        new.set_succession(chain)
        hub = self.hub
        if hub is not None:
            hub.unregister(self)  # (a network link closes: nothing is received meanwhile)
        try:
            self._switch_identity(new, chain)
        except BaseException:
            if hub is not None:
                with contextlib.suppress(Exception):
                    hub.register(self)  # back on the hub with the identity it had
            raise
        if hub is not None:
            hub.register(self)  # the bundle carries the statements: the hub re-binds the id
        self.log.info(
            "agent %r moved to the new identity %s (generation %d)",
            self.agent_id,
            new.fingerprint,
            generation,
        )
        return str(new.fingerprint)

    def _switch_identity(self, new: object, chain: list[bytes]) -> None:
        """Commit the new identity to disk (crash-safe), then in memory: every session is
        retired (it still opens what peers sealed before they follow; never seals again)."""
        spk_id = int(new.public_bundle()["signed_prekey_id"])  # type: ignore[attr-defined]
        now = _now_ms()
        until = now + RETIRED_GRACE_MS
        with self._save_lock:
            with self._lock:
                # every session retires: its export (sealed under the old identity) goes to the
                # new state file with the old identity, for the grace period
                retired_exports = {**self._retired_exports, **self._exports}
                for peer, session in self._sessions.items():
                    if peer not in self._unhandled:
                        retired_exports[peer] = session.export_sealed()
                state = PersistedState(
                    pins=dict(self._pins),
                    bundles=dict(self._bundles),
                    delivered=dict(self._delivered),
                    signed_prekey_since=now,
                    signed_prekey_id=spk_id,
                    retired_identity=bytes(self.keypair.to_bytes()),
                    retired_sessions=retired_exports,
                    retired_until=until,
                )
            if self.store is not None and not self._released:
                commit_rotation(self.store, new, chain, state)
            with self._lock:
                self._retired.update(self._sessions)
                self._retired_keypair = self.keypair
                self._retired_until = until
                self._retired_exports = retired_exports
                self._sessions.clear()
                self._exports.clear()
                self._unverified.clear()
                self._inbound_only.clear()
                if self._dirty is not None:
                    self._dirty.clear()
                self.keypair = new
                self.fingerprint = str(new.fingerprint)  # type: ignore[attr-defined]
                self._identity_revision = new.revision  # type: ignore[attr-defined]
                self._signed_prekey_id = spk_id
                self._signed_prekey_since = now
