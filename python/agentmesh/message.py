"""The message a handler gets: decrypted, authenticated and immutable."""

from __future__ import annotations

from typing import Any

from . import crypto as _crypto

__all__ = ["Message"]

Envelope = _crypto.Envelope


class Message:
    """One decrypted, authenticated message. Immutable.

    ``timestamp`` (ms since the epoch) and ``id`` come from the envelope and are covered by the
    sender's signature. ``group`` is the group id of a group message (None for a pairwise one).
    """

    __slots__ = ("_env", "group", "payload", "recipient", "sender")

    sender: str
    recipient: str
    payload: dict[str, Any]
    group: str | None
    _env: Any

    def __init__(
        self,
        sender: str,
        recipient: str,
        payload: dict[str, Any],
        envelope: Any,
        group: str | None = None,
    ):
        _set = object.__setattr__
        _set(self, "sender", sender)
        _set(self, "recipient", recipient)
        _set(self, "payload", payload)
        _set(self, "_env", envelope)
        _set(self, "group", group)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Message is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Message is immutable")

    @property
    def text(self) -> str:
        """``payload["text"]`` (``""`` when the payload has none)."""
        return self.payload.get("text", "")  # type: ignore[no-any-return]

    @property
    def type(self) -> str:
        """``payload["type"]``, ``"message"`` by default."""
        return self.payload.get("type", "message")  # type: ignore[no-any-return]

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch, set by the sender and covered by its signature."""
        return int(self._env.timestamp)

    @property
    def id(self) -> str:
        """Unique per message (hex)."""
        return str(self._env.id)

    @property
    def envelope(self) -> Any:
        """The :class:`~agentmesh.crypto.Envelope` (a group message: the
        :class:`~agentmesh.crypto.GroupEnvelope`) this message came in."""
        return self._env

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (what ``agentmesh listen`` prints)."""
        return {
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "group": self.group,
            "timestamp": self.timestamp,
            "type": self.type,
            "text": self.text,
            "payload": self.payload,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.id == other.id
            and self.sender == other.sender
            and self.recipient == other.recipient
            and self.group == other.group
            and self.payload == other.payload
        )

    def __hash__(self) -> int:
        return hash((self.sender, self.id))

    def __reduce__(self) -> Any:
        return (
            _message_from_bytes,
            (self.sender, self.recipient, self.payload, self._env.to_bytes(), self.group),
        )

    def __repr__(self) -> str:
        text = self.text
        if isinstance(text, str) and len(text) > 60:
            text = text[:57] + "..."
        group = f"group={self.group!r}, " if self.group is not None else ""
        return (
            f"Message(sender={self.sender!r}, recipient={self.recipient!r}, {group}"
            f"type={self.type!r}, text={text!r}, id={self.id!r})"
        )


def _message_from_bytes(
    sender: str, recipient: str, payload: dict[str, Any], raw: bytes, group: str | None = None
) -> Message:
    return Message(sender, recipient, payload, _crypto.as_envelope(raw), group)
