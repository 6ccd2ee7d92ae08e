"""Groups, sending: a group message sealed and signed once and handed to the transport once
for every other member (the hub fans it out, :mod:`agentmesh.fanout`), after the sender key
to each member that lacks it (pairwise).

A room of the agent core (see ``agent_group_state.py``).
"""

from __future__ import annotations

from typing import Any

from .agent_group_state import GROUP_CONTROL_TYPE, GroupState, _b64, _Effects
from .agent_requests import check_no_meta
from .agent_rules import MAX_ENVELOPE_BYTES
from .errors import MessageTooLargeError
from .fanout import GroupUpload


class AddressedGroupMessage(bytes):
    """The wire bytes of one group message addressed to one member: what a transport sends. A
    ``bytes`` (the local hub parses it like any envelope) with the two fields the network link
    reads without parsing."""

    recipient: str
    counter: int

    def __new__(cls, data: bytes, recipient: str, counter: int) -> AddressedGroupMessage:
        self = super().__new__(cls, data)
        self.recipient = recipient
        self.counter = counter
        return self

    def to_bytes(self) -> bytes:
        return bytes(self)



class _GroupSending(GroupState):
    """Sending group messages (see the module)."""

    def _transmit_group(self, upload: GroupUpload) -> None:
        """Hand one group message to the transport once, for every recipient (the hub fans
        it out). A transport without ``send_group`` (a hub of the user's own) gets one
        addressed copy per member."""
        transport = self._transport
        if transport is None:
            raise RuntimeError(f"agent {self.agent_id!r} is closed")
        send_group = getattr(transport, "send_group", None)
        if send_group is not None:
            send_group(upload)
            return
        for member in upload.recipients:
            self.transmit(AddressedGroupMessage(upload.copy_for(member), member, upload.counter))

    def group_send(self, group_id: str, payload: dict[str, Any]) -> Any:
        """Seal ``payload`` once and hand it to the transport once for every other member (the
        hub fans it out, :mod:`agentmesh.fanout`); returns the sealed GroupEnvelope. Members
        without this member's current sending chain get it first, over their pairwise session
        (the hub keeps a sender's envelopes in order; a message that still overtakes its key
        waits for it at the member)."""
        if payload.get("type") == GROUP_CONTROL_TYPE:
            raise ValueError(f"payload type {GROUP_CONTROL_TYPE!r} is reserved")
        check_no_meta(payload)
        if self._transmit is None:
            raise RuntimeError(f"agent {self.agent_id!r} is closed or not on a hub")
        effects = _Effects()
        with self._group_lock:
            group = self._require_group(group_id)
            session = group.session
            others = group.others(self.agent_id)
            if session.sending_chain_id is None:
                group.distributed.clear()
            distributed = group.distributed
            missing = (
                []
                if distributed.issuperset(others)
                else [m for m in others if m not in distributed]
            )
            # (the key as of this message: taken before the seal moves the chain on)
            key = _b64(session.distribution()) if missing else None
            env = session.seal(payload)
            upload = None
            size = 0
            if others:
                upload = GroupUpload(env.to_unaddressed_bytes(), others, env.counter)
                size = len(upload.data) + 1 + 255  # (the longest id any member can have)
                if size > MAX_ENVELOPE_BYTES:  # (then the longest a member has)
                    size = len(upload.data) + 1 + max(len(m.encode("utf-8")) for m in others)
            if size > MAX_ENVELOPE_BYTES:
                raise MessageTooLargeError(
                    f"group message to {group_id!r} is {size:,} bytes sealed, over "
                    f"the limit of {MAX_ENVELOPE_BYTES:,} bytes per message on every hub; send "
                    "it in parts, or pass a reference to where the data is instead"
                )
            if key is not None:
                control = {
                    "type": GROUP_CONTROL_TYPE,
                    "op": "sender_key",
                    "group": group_id,
                    "key": key,
                }
                effects.sends.extend((member, control) for member in missing)
                group.distributed.update(missing)
            if upload is not None:
                effects.uploads.append(upload)
            self.sent += 1
        self._run_effects(effects)
        return env

