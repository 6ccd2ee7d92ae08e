"""Every exception agentmesh raises on purpose.

The Rust core has one error enum; the glue maps each variant onto exactly one class here, so
``except CryptoError`` catches every cryptographic rejection and the subclasses say which one.
Messages name the problem and never carry key material.
"""

from __future__ import annotations


class AgentMeshError(Exception):
    """Base class of every agentmesh error."""


class CryptoError(AgentMeshError):
    """A cryptographic operation refused its input (see the subclasses)."""


class FormatError(CryptoError, ValueError):
    """Bytes that are not a well-formed envelope, bundle, key file or session export."""


class VersionError(FormatError):
    """A well-formed object of a protocol version this build does not speak."""


class AuthenticationError(CryptoError):
    """The AEAD tag did not verify: the envelope was altered or is not for this session."""


TamperError = AuthenticationError


class SignatureError(CryptoError):
    """An Ed25519 signature is missing, malformed, non-canonical or does not verify."""


class ReplayError(CryptoError):
    """This message was already accepted once."""


class MessageGapError(CryptoError):
    """The message counter jumped further ahead than the skipped-key window allows."""


class IdentityError(CryptoError):
    """Ids or identity keys do not match the session (misbinding, wrong sender, reflection)."""


class IdentityChangedError(IdentityError):
    """A pinned peer now presents a different identity key (trust on first use)."""

    def __init__(self, peer_id: str, old_fingerprint: str, new_fingerprint: str) -> None:
        super().__init__(
            f"Identity key of peer {peer_id!r} changed: pinned {old_fingerprint}, "
            f"now {new_fingerprint}; accept it explicitly with "
            f"agent.trust_new_identity({peer_id!r}, {new_fingerprint!r}) after checking it"
        )
        self.peer_id = peer_id
        self.old_fingerprint = old_fingerprint
        self.new_fingerprint = new_fingerprint


class KeyFileError(CryptoError):
    """An identity or state file is corrupt, truncated, unreadable or the passphrase is wrong."""


class StateWriteError(KeyFileError, OSError):
    """The agent could not write its state or identity file (disk full, I/O error). Nothing
    that depends on the write happens until it succeeds: received envelopes stay
    unacknowledged at the hub (they come again), and ``flush()``/``close()`` raise this."""


class UnknownSenderError(IdentityError):
    """An envelope arrived from an agent whose bundle cannot be found."""


class HubError(AgentMeshError):
    """The hub refused a request or the connection to it failed."""


class FlushTimeoutError(HubError, TimeoutError):
    """flush() timed out before the hub acknowledged every envelope sent so far."""
