"""Low-level cryptography of agentmesh (spec section 6), implemented in Rust.

``AgentKeyPair``, ``CryptoSession`` and ``Envelope`` are the native classes; ``seal`` and
``unseal`` are the spec's function forms of ``CryptoSession.seal`` / ``CryptoSession.unseal``,
adding the identity checks their extra arguments call for. The wire protocol is specified in
docs/protocol.md; the whole API in docs/crypto-api.md.
"""

from __future__ import annotations

from typing import Any

from agentmesh._native import (
    MAX_GROUP_MEMBERS,
    MAX_GROUP_MESSAGE_GAP,
    MAX_GROUP_SKIPPED_KEYS,
    MAX_MESSAGE_GAP,
    MAX_SETUPS_PER_SIGNED_PREKEY,
    MAX_SKIPPED_KEYS,
    MAX_SUCCESSION_CHAIN,
    PROTOCOL_VERSION,
    AgentKeyPair,
    CryptoSession,
    Envelope,
    GroupEnvelope,
    GroupSession,
    bundle_from_bytes,
    bundle_to_bytes,
    check_agent_id,
    fingerprint_of,
    fingerprint_of_key,
    follow_succession,
    perform_key_exchange,
    sign_membership,
    sign_succession,
    # Internal, so not in __all__: the network receive path unseals many sessions' batches at once.
    unseal_across,  # noqa: F401
    verify_bundle,
    verify_membership,
    verify_registration,
    verify_succession,
)
from agentmesh.errors import (
    AuthenticationError,
    CryptoError,
    FormatError,
    IdentityChangedError,
    IdentityError,
    IdentityRolledBackError,
    KeyFileError,
    MessageGapError,
    ReplayError,
    SignatureError,
    TamperError,
    VersionError,
)

__all__ = [
    "MAX_GROUP_MEMBERS",
    "MAX_GROUP_MESSAGE_GAP",
    "MAX_GROUP_SKIPPED_KEYS",
    "MAX_MESSAGE_GAP",
    "MAX_SETUPS_PER_SIGNED_PREKEY",
    "MAX_SKIPPED_KEYS",
    "MAX_SUCCESSION_CHAIN",
    "PROTOCOL_VERSION",
    "AgentKeyPair",
    "AuthenticationError",
    "CryptoError",
    "CryptoSession",
    "Envelope",
    "FormatError",
    "GroupEnvelope",
    "GroupSession",
    "IdentityChangedError",
    "IdentityError",
    "IdentityRolledBackError",
    "KeyFileError",
    "MessageGapError",
    "ReplayError",
    "SignatureError",
    "TamperError",
    "VersionError",
    "as_envelope",
    "bundle_from_bytes",
    "bundle_to_bytes",
    "check_agent_id",
    "fingerprint_of",
    "fingerprint_of_key",
    "follow_succession",
    "open_at_rest",
    "perform_key_exchange",
    "seal",
    "seal_at_rest",
    "sign_membership",
    "sign_succession",
    "unseal",
    "verify_bundle",
    "verify_membership",
    "verify_registration",
    "verify_succession",
]


def as_envelope(
    data: Envelope | GroupEnvelope | bytes | bytearray | memoryview,
) -> Envelope | GroupEnvelope:
    """``data`` as an :class:`Envelope` or, for a group message (envelope type 0x03), a
    :class:`GroupEnvelope`: an envelope object as it is, bytes parsed. Anything else, like bytes
    that are no envelope, is a ``FormatError``."""
    if isinstance(data, (Envelope, GroupEnvelope)):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if GroupEnvelope.is_group_message(raw):
            return GroupEnvelope.from_bytes(raw)
        return Envelope.from_bytes(raw)
    raise FormatError(f"expected an Envelope or bytes, got {type(data).__name__}")


def seal(
    session: CryptoSession,
    sender_keypair: AgentKeyPair,
    sender_id: str,
    recipient_id: str,
    payload: dict[str, Any],
) -> Envelope:
    """Encrypt and sign ``payload`` from ``sender_id`` to ``recipient_id`` on ``session``.

    The keypair and both ids must be the session's own (``IdentityError`` otherwise): a message
    can never be sealed under one identity and labelled with another. On a session of an
    identity made with ``AgentKeyPair()``, the first seal fixes the ids it is given for good.
    ``bytes`` values anywhere in ``payload`` are sealed as raw bytes (not base64) and come back
    from :func:`unseal` as ``bytes`` (docs/protocol.md, section 5.1).
    """
    return session.seal_as(sender_keypair, sender_id, recipient_id, payload)


def unseal(
    session: CryptoSession, envelope: Envelope | bytes, sender_bundle: dict[str, Any]
) -> dict:
    """Decrypt and authenticate ``envelope`` from the agent of ``sender_bundle``.

    The bundle must be the session peer's (same signed agent id and identity key): a message
    checked against the wrong sender's keys is an ``IdentityError``.
    """
    return session.unseal_from(envelope, sender_bundle)


def seal_at_rest(keypair: AgentKeyPair, data: bytes) -> bytes:
    """Encrypt ``data`` for storage under a key derived from ``keypair``'s identity secret."""
    return keypair.seal_at_rest(data)


def open_at_rest(keypair: AgentKeyPair, data: bytes) -> bytes:
    """Open data sealed by :func:`seal_at_rest` (``KeyFileError`` if corrupt or not ours)."""
    return keypair.open_at_rest(data)
