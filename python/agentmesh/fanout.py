"""One group message, many deliveries: the *unaddressed form* of a group message and the copy
each member receives.

A group message (envelope type 0x03, docs/protocol.md section 8.3) names its recipient in a
routing field that nothing authenticates: the associated data, the signature and the
ciphertext are the same for every member. So the sender hands its backend the message once,
without that field (the unaddressed form), with the list of members; the backend (the network
hub, ``LocalHub``, or any other behind :mod:`agentmesh.backend`) writes each member's copy by
putting the member's id back in. A backend can only change the routing field, which it could
always do (misdeliver): every byte a member checks comes from the sender unchanged.

Unaddressed form = the group envelope without ``id(recipient)``::

    "AM" || 0x01 || 0x03 || 0x01 || id(sender) || id(group) || chain id || counter || ...

:func:`address` inserts ``id(recipient)`` after ``id(sender)``: a byte copy, no cryptography.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_FANOUT_RECIPIENTS",
    "GroupUpload",
    "address",
    "check_recipients",
    "id_field",
    "split",
    "unaddressed",
]

#: Most recipients of one fan-out (the most members a group can have, docs/protocol.md 8.4).
MAX_FANOUT_RECIPIENTS = 1000

_GROUP_HEAD = b"AM\x01\x03\x01"  # magic, version, type 0x03, flags (always signed)


def _sender_end(data: bytes) -> int:
    """Where ``id(sender)`` ends in a group envelope's first bytes (ValueError if they are no
    group message's)."""
    if len(data) < 7 or data[:5] != _GROUP_HEAD:
        raise ValueError("not a group message (expected 'AM', version 1, type 0x03, flags 0x01)")
    end = 6 + data[5]
    if data[5] == 0 or len(data) <= end:
        raise ValueError("group message is truncated in its sender id")
    return end


def unaddressed(addressed: bytes) -> bytes:
    """The unaddressed form of the wire bytes of a group message addressed to anyone."""
    data = bytes(addressed)
    end = _sender_end(data)
    rlen = data[end]
    if rlen == 0 or len(data) <= end + 1 + rlen:
        raise ValueError("group message is truncated in its recipient id")
    return data[:end] + data[end + 1 + rlen :]


def address(data: bytes, recipient: bytes) -> bytes:
    """The copy of the unaddressed group message ``data`` for ``recipient`` (its UTF-8 id,
    1..255 bytes, checked by the caller)."""
    end = _sender_end(data)
    return b"".join((data[:end], _ID_LENGTH[len(recipient)], recipient, data[end:]))


def split(data: bytes) -> tuple[bytes, bytes]:
    """(before, after) the recipient field of the unaddressed group message ``data``: a copy
    is ``before + id_field(recipient) + after`` (for many copies of one message)."""
    end = _sender_end(data)
    return data[:end], data[end:]


def id_field(recipient: bytes) -> bytes:
    """``u8 length || recipient`` (an id of 1..255 UTF-8 bytes, checked by the caller)."""
    return _ID_LENGTH[len(recipient)] + recipient


_ID_LENGTH = [bytes((n,)) for n in range(256)]


def check_recipients(recipients: Any) -> list[str]:
    """``recipients`` as a list of distinct valid agent ids, 1..MAX_FANOUT_RECIPIENTS of them;
    ValueError (TypeError for a str) naming the problem."""
    from .crypto import check_agent_id

    if isinstance(recipients, (str, bytes)):
        raise TypeError("recipients must be a list of agent ids, not a single id")
    out = list(recipients)
    if not 1 <= len(out) <= MAX_FANOUT_RECIPIENTS:
        raise ValueError(
            f"a fan-out has 1..{MAX_FANOUT_RECIPIENTS} recipients, not {len(out)}"
        )
    for recipient in out:
        check_agent_id(recipient, "recipient id")
    if len(set(out)) != len(out):
        raise ValueError("a fan-out names a recipient twice")
    return out


class GroupUpload:
    """One group message on its way to a backend: the unaddressed form and its recipients
    (what an agent hands its transport once per ``group.send``)."""

    __slots__ = ("counter", "data", "recipients")

    def __init__(self, data: bytes, recipients: list[str], counter: int) -> None:
        self.data = data
        self.recipients = recipients
        #: the message's position in its sending chain (0: the chain's first message)
        self.counter = counter

    def __len__(self) -> int:
        return len(self.data)

    def copy_for(self, recipient: str) -> bytes:
        return address(self.data, recipient.encode("utf-8"))
