"""The message a handler gets: decrypted, authenticated and immutable."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from . import crypto as _crypto

__all__ = ["META_KEY", "Message", "json_safe"]

Envelope = _crypto.Envelope

#: The payload key that carries agentmesh's own fields of a message (a request's mark, a
#: reply's ``reply_to`` and error), inside the encrypted payload; never shown in
#: ``Message.payload`` and refused in a user's payload.
META_KEY = "_agentmesh"


def _bytes_as_json(value: bytes) -> dict[str, Any]:
    return {"bytes": len(value), "base64": base64.b64encode(value).decode("ascii")}


def json_safe(value: Any, render_bytes: Callable[[bytes], Any] = _bytes_as_json) -> Any:
    """``value`` with every ``bytes`` in it (nested in dicts and lists too) replaced by
    ``render_bytes(value)``; by default ``{"bytes": size, "base64": ...}``. Binary values travel
    as raw bytes; this is only for showing a payload as JSON."""
    if isinstance(value, bytes):
        return render_bytes(value)
    if isinstance(value, dict):
        return {k: json_safe(v, render_bytes) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v, render_bytes) for v in value]
    return value


def _take_meta(payload: dict[str, Any]) -> dict[str, Any] | None:
    meta = payload.pop(META_KEY, None) if META_KEY in payload else None
    return meta if isinstance(meta, dict) else None


class _MessageFields:
    """A :class:`Message`'s slots, without its refusal to be changed: a message is filled in as
    one of these, then made a Message by one class switch (:func:`new_message`; seven slot
    setters called through their descriptors cost more than the rest of receiving a message in
    Python)."""

    __slots__ = ("_agent", "_env", "_meta", "group", "payload", "recipient", "sender")

    sender: str
    recipient: str
    payload: dict[str, Any]
    group: str | None
    _env: Any
    _meta: dict[str, Any] | None
    _agent: Any


class Message(_MessageFields):
    """One decrypted, authenticated message. Immutable.

    ``timestamp`` (ms since the epoch) and ``id`` come from the envelope and are covered by the
    sender's signature. ``group`` is the group id of a group message (None for a pairwise one).
    A message received by an agent can be answered: :meth:`reply`, :meth:`reply_payload`,
    :meth:`reply_error` (now or later, from any thread).
    """

    __slots__ = ()

    def __new__(
        cls,
        sender: str,
        recipient: str,
        payload: dict[str, Any],
        envelope: Any,
        agent: Any = None,
        meta: dict[str, Any] | None = None,
        group: str | None = None,
    ) -> Message:
        msg = new_message(sender, recipient, payload, envelope, agent, meta, group)
        if cls is not Message:  # (a subclass's instance: the slots set through their setters)
            fields = _new_object(cls)
            for name in _MessageFields.__slots__:
                _MessageFields.__dict__[name].__set__(fields, getattr(msg, name))
            return fields
        return msg

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
    def data(self) -> bytes | None:
        """``payload["data"]`` when it is binary (``send(peer, data=b"...")``), else None."""
        value = self.payload.get("data")
        return value if isinstance(value, bytes) else None

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch, set by the sender and covered by its signature."""
        return int(self._env.timestamp)

    @property
    def id(self) -> str:
        """Unique per message (hex)."""
        return str(self._env.id)

    @property
    def reply_to(self) -> str | None:
        """For a reply: the id of the request it answers (else None)."""
        meta = self._meta
        value = meta.get("reply_to") if meta is not None else None
        return value if isinstance(value, str) else None

    @property
    def is_request(self) -> bool:
        """The sender sent this with ``request()`` and waits for a reply."""
        meta = self._meta
        return meta is not None and meta.get("request") is True

    def reply(self, text: str = "", **kwargs: Any) -> Any:
        """Answer this message (``text`` and every keyword land in the reply's payload); a
        waiting ``request()`` returns the reply. Returns the reply's Envelope."""
        return self.reply_payload({"text": text, **kwargs})

    def reply_payload(self, payload: dict[str, Any]) -> Any:
        """:meth:`reply` with a whole payload dict."""
        return self._answerer().send_reply(self, payload, None)

    def reply_error(self, reason: str) -> Any:
        """Answer with an error: the caller's ``request()`` raises ``RemoteError(reason)``."""
        if not isinstance(reason, str):
            raise TypeError(f"reply_error needs a str reason, got {type(reason).__name__}")
        return self._answerer().send_reply(self, {}, reason)

    def _answerer(self) -> Any:
        agent = self._agent
        if agent is None:
            raise RuntimeError(
                "this message was not received by a running agent here, so it cannot be "
                "answered (a copy made with pickle, or made by hand)"
            )
        return agent

    @property
    def envelope(self) -> Any:
        """The :class:`~agentmesh.crypto.Envelope` (a group message: the
        :class:`~agentmesh.crypto.GroupEnvelope`) this message came in."""
        return self._env

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (what ``agentmesh listen`` prints); binary values
        of the payload are shown as ``{"bytes": size, "base64": ...}`` (:func:`json_safe`)."""
        return {
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "group": self.group,
            "timestamp": self.timestamp,
            "type": self.type,
            "text": self.text,
            "payload": json_safe(self.payload),
            "reply_to": self.reply_to,
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
            (
                self.sender,
                self.recipient,
                self.payload,
                self._env.to_bytes(),
                self._meta,
                self.group,
            ),
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


_new_object = object.__new__


def new_message(
    sender: str,
    recipient: str,
    payload: dict[str, Any],
    envelope: Any,
    agent: Any = None,
    meta: dict[str, Any] | None = None,
    group: str | None = None,
) -> Message:
    """``Message(...)`` without the class call (the receiving paths' way: once per message)."""
    msg = _MessageFields()
    msg.sender = sender
    msg.recipient = recipient
    if meta is None and META_KEY in payload:  # (rare: a request, a reply, a kind)
        meta = _take_meta(payload)
    msg._meta = meta
    msg.payload = payload
    msg._env = envelope
    msg._agent = agent
    msg.group = group
    msg.__class__ = Message
    return msg  # type: ignore[return-value]


def _message_from_bytes(
    sender: str,
    recipient: str,
    payload: dict[str, Any],
    raw: bytes,
    meta: dict[str, Any] | None = None,
    group: str | None = None,
) -> Message:
    return Message(sender, recipient, payload, _crypto.as_envelope(raw), None, meta or {}, group)
