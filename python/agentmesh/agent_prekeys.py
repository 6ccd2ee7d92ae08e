"""The prekey policy: new one-time prekeys (written before they are handed out), signed prekey age
and rotation.

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

from typing import Any

from . import crypto as _crypto
from .agent_rules import (
    KEEP_HANDED_OUT_PREKEYS,
    _now_ms,
)
from .agent_state import AgentCoreState


class _Prekeys(AgentCoreState):
    """The prekey policy (see the module)."""

    def new_prekeys(self, hub_holds: int, n: int) -> list[dict[str, Any]]:
        """``n`` new one-time prekeys for the hub, written to the identity file first (so that a
        restarted agent can still answer set-ups that use them).

        The hub hands out the lowest ids first, so of the keys held here all but the newest
        ``hub_holds`` were handed out already; of those, only the newest
        ``KEEP_HANDED_OUT_PREKEYS`` are kept for set-ups still to arrive (bounded memory and
        file size: a set-up that arrives later than that fails, and the peer starts anew)."""
        with self._save_lock:
            # first the sessions of every set-up settled so far: the identity file written
            # below no longer holds their one-time prekeys, and remembers their base keys
            self._save_state_locked()
            with self._lock:
                keypair = self.keypair
                ids = keypair.one_time_prekey_ids()
                handed_out = ids[: max(0, len(ids) - hub_holds)]
                stale = handed_out[: max(0, len(handed_out) - KEEP_HANDED_OUT_PREKEYS)]
                if stale:
                    keypair.forget_one_time_prekeys(stale)
                fresh: list[dict[str, Any]] = keypair.generate_one_time_prekeys(n)
            self._write_identity()
        return fresh

    def signed_prekey_due(self, max_age: float) -> bool:
        """Whether the signed prekey is older than ``max_age`` seconds, or has remembered so
        many set-ups that it would soon refuse new ones (MAX_SETUPS_PER_SIGNED_PREKEY)."""
        if self.keypair.setups_remembered >= _crypto.MAX_SETUPS_PER_SIGNED_PREKEY * 4 // 5:
            return True
        return _now_ms() - self._signed_prekey_since > max_age * 1000

    def rotate_signed_prekey(self) -> None:
        """Make a new signed prekey (the previous one keeps serving set-ups already in flight;
        the one before it is deleted, from memory and from the identity file). The identity
        file is written before the state and before anyone can see the new bundle, so a
        restarted agent can answer every set-up made with it."""
        with self._save_lock:
            self._save_state_locked()  # (as in new_prekeys)
            with self._lock:
                self.keypair.rotate_signed_prekey()
                self._signed_prekey_since = _now_ms()
                self._signed_prekey_id = int(self.keypair.public_bundle()["signed_prekey_id"])
                self._meta_dirty = True
            self._write_identity()
        self.save_state_quietly()
