"""The small rules every room of the agent shares: its bounds and intervals, the agent-id rule,
and how peers' identity keys and bundles are compared and kept."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any

from . import crypto as _crypto

MAX_AGENT_ID_BYTES = 255
#: Largest sealed envelope an agent sends, on every hub (4 MiB): what the network hub's default
#: frame limit carries with room for its header, so code tried on a LocalHub does not break on
#: the network. A larger send raises ``MessageTooLargeError`` before anything leaves.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
#: How often (seconds) a persistent agent on a LocalHub writes its state while it is busy.
AUTOSAVE_INTERVAL = 1.0
#: Default time ``close()`` waits for the hub to acknowledge what was sent.
CLOSE_TIMEOUT = 30.0
#: ``receive_batch``: a signed-mode run of at least this many envelopes from one sender is
#: unsealed with one ``unseal_many`` call (batch signature verification); shorter runs, and
#: deniable sessions (no signature to batch), one envelope at a time, which is faster there.
UNSEAL_MANY_MIN = 2
#: ... and at most this many per call, so the agent's lock is never held for long.
UNSEAL_MANY_MAX = 64
#: A persistent agent remembers its last handled delivery id for this many hub stores (the
#: ones it used most recently); see ``note_delivered``.
MAX_DELIVERED_HUBS = 16
#: Most sessions an agent keeps that other agents opened and it never answered (any agent on
#: the hub can open one); past it the oldest is forgotten.
MAX_INBOUND_ONLY_SESSIONS = 1000
#: How long (ms) sessions retired by an identity rotation, and the previous identity, are kept
#: (also across restarts) to open what was sealed for them before the rotation was known.
RETIRED_GRACE_MS = 7 * 24 * 3600 * 1000
# how long a live session goes without its peer's bundle being looked up again: a sender that
# never hears back learns of a rotation this way, well within RETIRED_GRACE_MS
SESSION_RECHECK_S = 3600.0
#: The re-check's clock (monotonic seconds: one C call per send, no conversion).
_recheck_clock = time.monotonic
#: One-time prekeys a hub handed out and no set-up used yet that an agent keeps; older ones are
#: deleted when it makes new ones (see ``new_prekeys``).
KEEP_HANDED_OUT_PREKEYS = 200


def _now_ms() -> int:
    return int(time.time() * 1000)


def validate_agent_id(agent_id: object, what: str = "agent_id") -> str:
    """Return ``agent_id`` if it is a valid agent id, else raise ``ValueError`` naming the problem.

    Valid: a non-empty ``str`` of at most 255 UTF-8 bytes without control characters.
    """
    # The rule lives in the Rust core (keys.rs, agent_id_problem); the hub and the envelope
    # codec apply the same one.
    _crypto.check_agent_id(agent_id, what)
    assert isinstance(agent_id, str)  # for the type checker: anything else was refused
    return agent_id


def _fingerprint_of_key(identity_key_b64: str) -> str:
    """The spec's fingerprint of a base64 Ed25519 public key."""
    try:
        raw = base64.b64decode(identity_key_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return "?"
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _same_key(a: str, b: object) -> bool:
    if a == b:
        return True
    if not isinstance(b, str):
        return False
    try:
        return base64.b64decode(a, validate=True) == base64.b64decode(b, validate=True)
    except (binascii.Error, ValueError):
        return False


def _normalize_fingerprint(fp: str) -> str:
    return "".join(ch for ch in str(fp).lower() if ch in "0123456789abcdef")


def _public_bundle_copy(bundle: dict[str, Any]) -> dict[str, Any]:
    """A bundle to remember: without the one-time prekey the hub handed out (used once)."""
    return {k: v for k, v in bundle.items() if k != "one_time_prekey"}
