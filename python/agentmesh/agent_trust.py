"""Trust on first use: checking bundles against pinned identity keys, re-checking sessions loaded
from disk, accepting a changed identity.

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

from typing import Any

from . import crypto as _crypto
from .agent_rules import (
    RETIRED_GRACE_MS,
    _fingerprint_of_key,
    _normalize_fingerprint,
    _now_ms,
    _public_bundle_copy,
    _same_key,
    validate_agent_id,
)
from .agent_state import AgentCoreState
from .errors import (
    FormatError,
    IdentityChangedError,
    IdentityError,
    IdentityRolledBackError,
)
from .succession import retired_by, succession_problem

perform_key_exchange = _crypto.perform_key_exchange
verify_bundle = _crypto.verify_bundle


class _Trust(AgentCoreState):
    """Trust on first use (see the module)."""

    def _verify_before_send(self, peer_id: str) -> None:
        """Refuse to send while a peer presents an identity not (yet) trusted; check sessions
        restored from disk against the hub once per process."""
        pending = self._pending_identity.get(peer_id)
        if pending is not None:
            raise IdentityChangedError(
                peer_id,
                _fingerprint_of_key(self._pins.get(peer_id, "")),
                _fingerprint_of_key(str(pending.get("identity_key"))),
            )
        if peer_id in self._unverified:
            session = self._sessions.get(peer_id)
            renews = session is not None and session.renews_on_send
            # a loaded session starts a new set-up at its first send: claimed, not just looked
            # up, so that the hub may add a one-time prekey, and with the peer's current
            # signed prekey (it may have rotated while this agent was down)
            bundle = self._fetch_bundle(peer_id, claim=renews)
            if bundle is not None:
                self._check_bundle(peer_id, bundle)
                # (a followed succession retired the session: the send sets up a new one)
                still_current = self._sessions.get(peer_id) is session
                if renews and session is not None and still_current:
                    session.refresh_peer(bundle)
            self._unverified.discard(peer_id)

    def _check_bundle(self, peer_id: str, bundle: Any) -> None:
        """Verify a bundle's self-signature, its id, and the pinned identity key (TOFU)."""
        if not isinstance(bundle, dict):
            raise FormatError(f"bundle for {peer_id!r} must be a dict, not {type(bundle).__name__}")
        bundle_id = verify_bundle(bundle)
        if bundle_id != peer_id:
            raise IdentityError(f"the bundle offered for peer {peer_id!r} belongs to {bundle_id!r}")
        key = bundle.get("identity_key")
        pinned = self._pins.get(peer_id)
        if pinned is not None and _same_key(pinned, key):
            if peer_id in self._pending_identity:  # (a stale or passing bundle seen before)
                with self._lock:
                    self._pending_identity.pop(peer_id, None)
            return
        if pinned is not None:
            current = self._bundles.get(peer_id)
            if (
                current is not None
                and _same_key(pinned, current.get("identity_key"))
                and retired_by(current, key)
            ):
                raise IdentityRolledBackError(
                    peer_id, _fingerprint_of_key(pinned), _fingerprint_of_key(str(key))
                )
            problem = succession_problem(peer_id, pinned, bundle) if "succession" in bundle else ""
            if problem is None:
                self._follow_succession(peer_id, pinned, bundle)
                return
            if problem:
                self.log.warning(
                    "agent %r refused the succession statements of peer %r: %s",
                    self.agent_id,
                    peer_id,
                    problem,
                )
            self._pending_identity[peer_id] = _public_bundle_copy(bundle)
            raise IdentityChangedError(
                peer_id, _fingerprint_of_key(pinned), _fingerprint_of_key(str(key))
            )

    def _follow_succession(self, peer_id: str, pinned: str, bundle: dict[str, Any]) -> None:
        """The peer moved to a new identity key with statements signed by the pinned one: pin
        the new key (saved at once) and retire the session with the old one. A retired session
        only opens what the peer sealed before the move (``_open_retired``), for a grace period;
        the next send sets up a session with the new key."""
        key = str(bundle["identity_key"])
        with self._lock:
            if not _same_key(self._pins.get(peer_id, ""), pinned):
                return  # another thread followed it meanwhile
            self._pins[peer_id] = key
            session = self._sessions.pop(peer_id, None)
            if session is not None:
                self._retired[peer_id] = session
                self._retired_until = _now_ms() + RETIRED_GRACE_MS
            self._bundles[peer_id] = _public_bundle_copy(bundle)
            self._pending_identity.pop(peer_id, None)
            self._unverified.discard(peer_id)
            self._inbound_only.pop(peer_id, None)
            self._meta_dirty = True
            if self._dirty is not None:
                self._dirty.add(peer_id)
        self.log.info(
            "agent %r follows peer %r to its new identity %s (signed by the pinned %s)",
            self.agent_id,
            peer_id,
            _fingerprint_of_key(key),
            _fingerprint_of_key(pinned),
        )
        self.save_state_quietly()

    def _lookup_bundle(self, peer_id: str) -> dict[str, Any] | None:
        hub = self.hub
        if hub is not None:
            bundle = hub.get_bundle(peer_id)
            if bundle is not None:
                return bundle
        return self._bundles.get(peer_id)

    def trust_new_identity(self, peer_id: str, fingerprint: str) -> None:
        """Accept a changed identity key for ``peer_id`` after its fingerprint was checked."""
        validate_agent_id(peer_id, "peer id")
        wanted = _normalize_fingerprint(fingerprint)
        if len(wanted) != 32:
            raise ValueError(
                f"{fingerprint!r} is not a fingerprint (xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx)"
            )
        candidates = []
        pending = self._pending_identity.get(peer_id)
        if pending is not None:
            candidates.append(pending)
        if self.hub is not None:
            fresh = self.hub.get_bundle(peer_id)
            if fresh is not None:
                candidates.append(fresh)
        bundle = None
        for candidate in candidates:
            key = candidate.get("identity_key")
            if _normalize_fingerprint(_fingerprint_of_key(str(key))) == wanted:
                bundle = candidate
                break
        if bundle is None:
            presented = ", ".join(
                sorted({_fingerprint_of_key(str(c.get("identity_key"))) for c in candidates})
            )
            raise ValueError(
                f"peer {peer_id!r} does not present the identity {fingerprint!r}"
                + (f" (it presents {presented})" if presented else " (no new identity seen)")
            )
        if verify_bundle(bundle) != peer_id:
            raise IdentityError(f"the bundle offered for peer {peer_id!r} belongs to another id")
        session = perform_key_exchange(self.keypair, bundle, self.deniable)
        with self._lock:
            self._pins[peer_id] = str(bundle["identity_key"])
            self._sessions[peer_id] = session
            self._bundles[peer_id] = _public_bundle_copy(bundle)
            self._pending_identity.pop(peer_id, None)
            self._unverified.discard(peer_id)
            self._meta_dirty = True
            if self._dirty is not None:
                self._dirty.add(peer_id)
        self.log.warning(
            "agent %r now trusts the new identity %s of peer %r",
            self.agent_id,
            _fingerprint_of_key(str(bundle["identity_key"])),
            peer_id,
        )
        self.save_state()
