"""One group message, many deliveries: the *unaddressed form* of a group message, the copy each
member receives, and what a sender hands its backend once (:class:`GroupUpload`).

A group message (envelope type 0x03, docs/protocol.md section 8.3) names its recipient in a
routing field that nothing authenticates: the associated data, the signature and the
ciphertext are the same for every member. So the sender hands its backend the message once,
without that field (the unaddressed form, ``GroupEnvelope.to_unaddressed_bytes()``), with the
list of members; the backend (the network hub, ``LocalHub``, or any other behind
:mod:`agentmesh.backend`) writes each member's copy by putting the member's id back in
(:func:`address`, the Rust core's ``GroupEnvelope::address``: a byte copy, no cryptography). A
backend can only change the routing field, which it could always do (misdeliver): every byte a
member checks comes from the sender unchanged. Layout: docs/protocol.md section 9.1.
"""

from __future__ import annotations

from typing import Any

from .crypto import GroupEnvelope, check_agent_id

__all__ = [
    "MAX_FANOUT_RECIPIENTS",
    "GroupUpload",
    "address",
    "address_all",
    "check_recipients",
]

#: Most recipients of one fan-out (the most members a group can have, docs/protocol.md 8.4).
MAX_FANOUT_RECIPIENTS = 1000

#: ``address(unaddressed, recipient)``: the copy for one member (FormatError naming what is
#: wrong with the message's head, ValueError for a bad id).
address = GroupEnvelope.address
#: ``address_all(unaddressed, recipients)``: the copy for each, in order (one call).
address_all = GroupEnvelope.address_all


def check_recipients(recipients: Any) -> list[str]:
    """``recipients`` as a list of distinct valid agent ids, 1..MAX_FANOUT_RECIPIENTS of them;
    ValueError (TypeError for a str) naming the problem."""
    if isinstance(recipients, (str, bytes)):
        raise TypeError("recipients must be a list of agent ids, not a single id")
    out = list(recipients)
    if not 1 <= len(out) <= MAX_FANOUT_RECIPIENTS:
        raise ValueError(f"a fan-out has 1..{MAX_FANOUT_RECIPIENTS} recipients, not {len(out)}")
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
        return address(self.data, recipient)
