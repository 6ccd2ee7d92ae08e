"""Every exception agentmesh raises on purpose.

The Rust core has one error enum; the glue maps each variant onto exactly one class here, so
``except CryptoError`` catches every cryptographic rejection and the subclasses say which one.
Messages name the problem and never carry key material.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from agentmesh.hub_protocol import ErrorCode


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


class IdentityRolledBackError(IdentityChangedError):
    """A peer presents an identity key that its own succession statements (on the key this
    agent pinned) retired: a stale or replayed bundle, or a stolen old key. Nothing to trust:
    the pinned key stays, and sending goes on once the current bundle is seen again."""

    def __init__(self, peer_id: str, pinned_fingerprint: str, retired_fingerprint: str) -> None:
        IdentityError.__init__(
            self,
            f"peer {peer_id!r} presents the identity {retired_fingerprint}, which it retired "
            f"by a signed succession to the pinned {pinned_fingerprint}: refused as rolled "
            "back to a retired key (a stale bundle, or someone holding the old key)",
        )
        self.peer_id = peer_id
        self.old_fingerprint = pinned_fingerprint
        self.new_fingerprint = retired_fingerprint


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


class NatsAuthError(HubError):
    """A NATS cluster guarded by the agentmesh authorization service refused the connection:
    the service is down or unreachable, or it refused the agent's proof (its log says which)."""


class FlushTimeoutError(HubError, TimeoutError):
    """flush() timed out before the hub acknowledged every envelope sent so far."""


class HubRequestError(HubError):
    """The hub refused a request or a send; ``code`` says why (an
    :class:`~agentmesh.hub_protocol.ErrorCode`).

    For a refused send, ``recipient`` names the intended recipient and ``client_seq`` the
    client-side sequence number of the refused envelope.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        recipient: str | None = None,
        client_seq: int | None = None,
    ) -> None:
        super().__init__(message)
        try:
            self.code: ErrorCode | int = _hub_protocol().ErrorCode(code)
        except ValueError:  # a code of a newer hub
            self.code = code
        self.recipient = recipient
        self.client_seq = client_seq

    @property
    def unknown_request(self) -> bool:
        """The hub does not know the request (a hub of an earlier version): asking again is
        no use. Every hub answers an op it lacks with BAD_REQUEST ``unknown op N``."""
        protocol = _hub_protocol()
        return self.code == protocol.ErrorCode.BAD_REQUEST and str(self).startswith(
            protocol.UNKNOWN_OP
        )


class PeerNotFoundError(HubRequestError, ValueError):
    """``Peer 'xxx' not found on hub``: the recipient never registered. Also a ValueError."""


class ProtocolError(AgentMeshError):
    """Input that breaks the hub protocol; the connection answers with an ERROR frame (``code``,
    an :class:`~agentmesh.hub_protocol.ErrorCode`) and closes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MessageTooLargeError(AgentMeshError, ValueError):
    """A message sealed to more than the largest envelope agentmesh sends (also a
    ValueError); nothing was sent."""


class IdentityInUseError(AgentMeshError, RuntimeError):
    """Another live agent (in this process or another) holds this identity file (also a
    RuntimeError). Wait for it, or talk and listen in that one agent."""


class RemoteError(AgentMeshError):
    """The peer answered a request with ``msg.reply_error(reason)``: ``peer`` who, ``reason``
    why, ``request_id`` the request's id."""

    def __init__(self, peer: str, reason: str, request_id: str) -> None:
        super().__init__(f"{peer!r} answered request {request_id} with an error: {reason}")
        self.peer = peer
        self.reason = reason
        self.request_id = request_id


class ReplyTimeoutError(AgentMeshError, TimeoutError):
    """No reply to a request in time (a ``TimeoutError``); ``peer`` and ``timeout`` say which
    and how long. A reply that comes later goes to the error handlers as a
    :class:`LateReplyError`, never to this caller."""

    def __init__(self, peer: str, timeout: float, request_id: str) -> None:
        super().__init__(f"no reply from {peer!r} within {timeout:g} s (request {request_id})")
        self.peer = peer
        self.timeout = timeout
        self.request_id = request_id


class MessageExpiredError(AgentMeshError):
    """A message came after its sender's ``ttl`` (given to ``on_error`` handlers, never to
    the message handlers; the message itself is ``message``)."""

    def __init__(self, message: object, sender: str, ttl_ms: int) -> None:
        super().__init__(
            f"message from {sender!r} expired: it was to be handled within {ttl_ms / 1000:g} s"
        )
        self.message = message
        self.sender = sender
        self.ttl_ms = ttl_ms


class LateReplyError(AgentMeshError):
    """A reply came after its request had timed out (given to ``on_error`` handlers; the
    reply itself is ``message``)."""

    def __init__(self, message: object, sender: str, reply_to: str) -> None:
        super().__init__(f"late reply from {sender!r} to request {reply_to}: its caller gave up")
        self.message = message
        self.sender = sender
        self.reply_to = reply_to


class HandlersNotRunError(AgentMeshError, RuntimeError):
    """An :class:`AsyncAgent`'s handlers could not run a delivered message to the end: the
    event loop they run on was cancelled or closed under them, or the agent closed while the
    message waited for a loop. The message is not acknowledged, so the hub delivers it again
    to the agent's next connection (also a RuntimeError)."""


class StoreError(AgentMeshError):
    """The hub's store cannot be opened (locked by another hub, corrupt, unwritable) or a commit
    failed for good."""


def _hub_protocol() -> ModuleType:
    # The error codes live with the wire protocol, and hub_protocol imports this module: so it
    # is looked up when a hub error is made, not when this module is imported.
    from agentmesh import hub_protocol

    return hub_protocol


class IdentityRotationError(AgentMeshError, RuntimeError):
    """``rotate_identity`` cannot move this agent to a new identity key (its hub cannot re-bind
    the id, it is in a group, it is closed, or its keystore is unfinished business). Nothing
    was changed unless the message says so."""
