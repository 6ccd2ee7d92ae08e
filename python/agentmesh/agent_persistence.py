"""Persistence: the state file (sealed session exports, pins, bundles, delivery positions) and the
identity file, written in the order that keeps a crash safe.

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

import collections
import time
from typing import Any

from . import crypto as _crypto
from .agent_rules import (
    AUTOSAVE_INTERVAL,
    MAX_DELIVERED_HUBS,
    _now_ms,
)
from .agent_state import AgentCoreState
from .keystore import PersistedState

CryptoSession = _crypto.CryptoSession
AgentKeyPair = _crypto.AgentKeyPair


class _Persistence(AgentCoreState):
    """Persistence (see the module)."""

    @property
    def persistent(self) -> bool:
        return self.store is not None

    def _load_state(self) -> None:
        assert self.store is not None
        state = self.store.load_state(self.keypair)
        sessions = {}
        for peer, data in state.sessions.items():
            try:
                sessions[peer] = CryptoSession.import_state(self.keypair, data)
            except Exception as exc:
                from .errors import KeyFileError

                raise KeyFileError(
                    f"state file {str(self.store.state_path)!r}: the session with {peer!r} "
                    f"cannot be restored ({exc}); the file was left untouched"
                ) from exc
        self._sessions = sessions
        self._unverified = set(sessions)
        # (re-sealed: a state file written before exports were sealed holds them in the clear)
        self._exports = {peer: session.export_sealed() for peer, session in sessions.items()}
        self._inbound_only = collections.OrderedDict(
            (peer, None) for peer in state.inbound_only if peer in sessions
        )
        self._inbound_last = None
        self._pins = dict(state.pins)
        self._bundles = dict(state.bundles)
        self._delivered = dict(state.delivered)
        self._load_retired(state)
        self._load_groups(state.groups)
        self._signed_prekey_id = int(self.keypair.public_bundle()["signed_prekey_id"])
        if (
            state.signed_prekey_since is not None
            and state.signed_prekey_id == self._signed_prekey_id
        ):
            # (never in the future: a clock set back must not stop rotation)
            self._signed_prekey_since = min(state.signed_prekey_since, _now_ms())
        else:
            # no record (an older state file), or the identity file was rotated and the state
            # not written after it (a crash in between): count from now rather than rotate at
            # once past a key the hub may still be serving
            self._meta_dirty = True

    def _load_retired(self, state: PersistedState) -> None:
        """The sessions a rotation retired and the previous identity, while their grace
        period lasts (``RETIRED_GRACE_MS``); past it they are dropped at the next write."""
        if not state.retired_sessions and state.retired_identity is None:
            return
        if _now_ms() >= state.retired_until:
            self._meta_dirty = True
            return
        old = None
        if state.retired_identity is not None:
            old = AgentKeyPair.from_bytes(state.retired_identity)
        retired = {}
        for peer, data in state.retired_sessions.items():
            # (a session this agent retired for a peer's rotation is sealed under this
            # identity; one retired by this agent's own rotation, under the previous one)
            for keypair in (self.keypair, old):
                if keypair is None:
                    continue
                try:
                    retired[peer] = CryptoSession.import_state(keypair, data)
                    break
                except Exception:
                    continue
            else:
                # (what was sealed for it before the move can no longer be opened: say so,
                # rather than have those messages refused later with no word why)
                self.log.warning(
                    "agent %r: the retired session with %r does not load under this identity "
                    "or the previous one; messages sealed on it before the rotation will be "
                    "refused",
                    self.agent_id,
                    peer,
                )
        self._retired = retired
        self._retired_keypair = old
        self._retired_until = state.retired_until
        self._retired_exports = {p: state.retired_sessions[p] for p in retired}

    def _retired_state(self, held: Any) -> tuple[bytes | None, dict[str, bytes]]:
        """The previous identity and the retired sessions to write (``_lock`` held): dropped
        once their grace period is over; a session with messages whose handlers have not run
        keeps its saved export (like any other, see ``handled_from``)."""
        if (self._retired or self._retired_keypair is not None) and (
            _now_ms() >= self._retired_until
        ):
            self._retired.clear()
            self._retired_keypair = None
            self._retired_exports.clear()
        for peer, session in self._retired.items():
            if peer not in held:
                self._retired_exports[peer] = session.export_sealed()
        old = self._retired_keypair
        return (bytes(old.to_bytes()) if old is not None else None), dict(self._retired_exports)

    def _maybe_autosave(self) -> None:
        now = time.monotonic()
        if now >= self._next_save:
            self._next_save = now + AUTOSAVE_INTERVAL
            self.save_state_quietly()

    def save_state(self) -> None:
        """Write sessions and pins (only what changed is re-exported), then the identity file
        if accepted set-ups changed it. No-op without a store. Raises StateWriteError."""
        with self._save_lock:
            self._save_state_locked()

    def _save_state_locked(self) -> None:
        store = self.store
        if store is None or self._released:
            # (after close() released the identity lock, another agent may own the files: a
            # late write, e.g. by a worker finishing its batch, must not clobber them; close()
            # wrote everything that was unsealed)
            return
        dirty = self._dirty
        assert dirty is not None
        with self._lock:
            # every set-up counted in this revision has its session in this export: both
            # change under _lock (the binding settles a set-up inside unseal)
            revision: int | None = self.keypair.revision
            # sessions with messages unsealed whose handlers have not run keep their saved
            # state (and the identity file its revision) until the handlers ran
            held = self._unhandled
            if held:
                revision = None
            state = None
            if dirty or self._meta_dirty:
                for peer in dirty:
                    if peer in held:
                        continue
                    session = self._sessions.get(peer)
                    if session is None:
                        self._exports.pop(peer, None)
                    else:
                        self._exports[peer] = session.export_sealed()
                dirty.intersection_update(held)
                self._meta_dirty = False
                retired_identity, retired_sessions = self._retired_state(held)
                state = PersistedState(
                    sessions=dict(self._exports),
                    pins=dict(self._pins),
                    bundles=dict(self._bundles),
                    delivered=dict(self._delivered),
                    signed_prekey_since=self._signed_prekey_since,
                    signed_prekey_id=self._signed_prekey_id,
                    inbound_only=list(self._inbound_only),
                    groups=self._group_exports(),
                    retired_identity=retired_identity,
                    retired_sessions=retired_sessions,
                    retired_until=self._retired_until,
                )
        if state is not None:
            try:
                store.save_state(self.keypair, state)
            except BaseException:
                self._meta_dirty = True  # try again next time
                raise
        # The identity file forgets used one-time prekeys and remembers accepted set-ups
        # (replays stay refused). It is written only as of a revision whose sessions are all in
        # a state file on disk: the other way round, a crash in between would turn the
        # redelivered set-up into a "replay" and lose it. A set-up settled after the export
        # waits for the next save (the keypair refuses to write another revision).
        if (
            revision is not None
            and revision != self._identity_revision
            and store.save_identity(self.keypair, revision)
        ):
            self._identity_revision = revision

    @property
    def saves_held_back(self) -> bool:
        """Some sessions keep their saved state until handlers ran (see ``handled_from``)."""
        return bool(self._unhandled)

    @property
    def identity_unsaved(self) -> bool:
        """Whether the identity file lags behind the keypair (see save_state)."""
        if self.store is None or self._released:
            return False
        return bool(self.keypair.revision != self._identity_revision)

    def save_identity(self) -> None:
        """Rewrite the identity file (its prekeys changed). No-op without a store."""
        with self._save_lock:
            self._save_state_locked()
            self._write_identity()

    def _write_identity(self) -> None:
        # (the caller holds _save_lock and has saved the state; after close() released the
        # identity lock, another agent may own the file)
        if self.store is not None and not self._released:
            revision = self.keypair.revision  # (read first: a later change is written again)
            self.store.save_identity(self.keypair)
            self._identity_revision = revision

    def note_delivered(self, hub_id: bytes, delivery_id: int) -> None:
        """Remember, with the next state write, that every delivery up to ``delivery_id`` from
        the hub store ``hub_id`` was handled. A restarted agent hands this to its hub client, so
        a redelivery that a hub crash caused (the acknowledgement was not committed yet) is
        skipped silently rather than reported as a replay."""
        with self._lock:
            delivered = self._delivered
            delivered.pop(hub_id, None)  # most recently used last: the bound drops the oldest
            delivered[hub_id] = delivery_id
            while len(delivered) > MAX_DELIVERED_HUBS:
                del delivered[next(iter(delivered))]
            self._meta_dirty = True

    def delivered_positions(self) -> dict[bytes, int]:
        with self._lock:
            return dict(self._delivered)

    def save_state_quietly(self) -> None:
        try:
            self.save_state()
        except Exception:
            self.log.exception("agent %r: could not save its state", self.agent_id)
