"""Groups, membership: creating a group, adding and removing members, leaving (the
administrator's signed membership records, docs/protocol.md section 8.4), and the control
messages that carry records and sender keys between members (pairwise payloads of the reserved
type ``"agentmesh.group"``).

A room of the agent core (see ``agent_group_state.py``); the caller of each ``_on_*`` holds
``_group_lock``.
"""

from __future__ import annotations

import base64
from typing import Any

from . import crypto as _crypto
from .agent_group_state import (
    GROUP_CONTROL_TYPE,
    GroupRecord,
    GroupState,
    _b64,
    _Effects,
    _unb64,
)
from .errors import FormatError, IdentityError, ReplayError

GroupSession = _crypto.GroupSession


class _GroupMembership(GroupState):
    """Administration and control messages (see the module)."""

    def create_group(self, group_id: str, members: Any) -> GroupRecord:
        _crypto.check_agent_id(group_id, "group id")
        if isinstance(members, str):
            raise TypeError("members must be a list of agent ids, not a str")
        wanted = []
        for member in members:
            _crypto.check_agent_id(member, "member id")
            if member != self.agent_id and member not in wanted:
                wanted.append(member)
        effects = _Effects()
        with self._group_lock:
            if group_id in self._groups:
                raise ValueError(f"group {group_id!r} already exists on agent {self.agent_id!r}")
            session = GroupSession(self.keypair, group_id)
            everyone = sorted({*wanted, self.agent_id})
            record = _crypto.sign_membership(self.keypair, group_id, 1, everyone)
            group = GroupRecord(session, self.agent_id, 1, everyone, record)
            self._groups[group_id] = group
            self._touch(group_id)
            self._announce(group_id, group, wanted, effects)
        self._run_effects(effects)
        return group

    def _require_admin(self, group_id: str) -> GroupRecord:
        group = self._require_group(group_id)
        if group.admin != self.agent_id:
            raise PermissionError(
                f"only the creator of group {group_id!r} ({group.admin!r}) changes its members"
            )
        return group

    def _require_group(self, group_id: str) -> GroupRecord:
        group = self._groups.get(group_id)
        if group is None:
            raise ValueError(f"agent {self.agent_id!r} is not a member of group {group_id!r}")
        return group

    def group_add(self, group_id: str, member: str) -> None:
        _crypto.check_agent_id(member, "member id")
        effects = _Effects()
        with self._group_lock:
            group = self._require_admin(group_id)
            if member in group.members:
                return
            self._change_members(group_id, group, [*group.members, member], [], effects)
        self._run_effects(effects)

    def group_remove(self, group_id: str, member: str) -> None:
        _crypto.check_agent_id(member, "member id")
        effects = _Effects()
        with self._group_lock:
            self._remove_locked(group_id, member, effects)
        self._run_effects(effects)

    def _remove_locked(self, group_id: str, member: str, effects: _Effects) -> None:
        group = self._require_admin(group_id)
        if member == self.agent_id:
            raise ValueError("the creator cannot remove itself from its group")
        if member not in group.members:
            raise ValueError(f"{member!r} is not a member of group {group_id!r}")
        remaining = [m for m in group.members if m != member]
        # the removed member is told too, so that it stops expecting messages
        self._change_members(group_id, group, remaining, [member], effects)

    def group_leave(self, group_id: str) -> None:
        with self._group_lock:
            group = self._require_group(group_id)
            if group.admin == self.agent_id:
                raise ValueError("the creator cannot leave its group: remove the members instead")
            del self._groups[group_id]
            self._touch(group_id)
        leave = {"type": GROUP_CONTROL_TYPE, "op": "leave", "group": group_id}
        self.send_payload(group.admin, leave)

    def _change_members(
        self,
        group_id: str,
        group: GroupRecord,
        members: list[str],
        also: list[str],
        effects: _Effects,
    ) -> None:
        epoch = group.epoch + 1
        everyone = sorted(set(members))
        record = _crypto.sign_membership(self.keypair, group_id, epoch, everyone)
        self._apply_membership(group_id, group, epoch, everyone, record)
        to = [m for m in everyone if m != self.agent_id] + also
        self._announce(group_id, group, to, effects)

    def _announce(
        self, group_id: str, group: GroupRecord, to: list[str], effects: _Effects
    ) -> None:
        payload = {
            "type": GROUP_CONTROL_TYPE,
            "op": "membership",
            "group": group_id,
            "record": _b64(group.record),
        }
        effects.sends.extend((member, payload) for member in to)

    def _apply_membership(
        self, group_id: str, group: GroupRecord, epoch: int, members: list[str], record: bytes
    ) -> None:
        """Adopt a verified record. Whoever left cannot read what follows: their chains are
        forgotten and this member's next message starts a new sending chain, handed only to the
        members of the new record."""
        removed = set(group.members) - set(members)
        group.epoch, group.members, group.record = epoch, members, record
        if removed:
            for gone in removed:
                group.session.forget_sender(gone)
            group.session.reset_sending_chain()
            group.distributed.clear()
        self._touch(group_id)


    # -- control messages (the caller holds _group_lock) ----------------------------------------

    def _on_group_control(self, sender: str, payload: dict[str, Any], effects: _Effects) -> None:
        op = payload.get("op")
        group_id = payload.get("group")
        if not isinstance(group_id, str):
            raise FormatError("group control message without a group id")
        if op == "membership":
            record = _unb64(payload.get("record"), "record")
            self._on_membership(sender, group_id, record, effects)
        elif op == "sender_key":
            key = _unb64(payload.get("key"), "key")
            self._on_sender_key(sender, group_id, key, effects)
        elif op == "leave":
            group = self._groups.get(group_id)
            if group is not None and group.admin == self.agent_id and sender in group.members:
                self._remove_locked(group_id, sender, effects)
        else:
            raise FormatError(f"group control message with an unknown op {op!r}")

    def _peer_identity_key(self, peer: str) -> bytes:
        pinned = self._pins.get(peer)
        if pinned is None:
            session = self._sessions.get(peer)
            if session is None:
                raise IdentityError(f"no identity key known for {peer!r}")
            pinned = session.peer_identity_key
        return base64.b64decode(pinned)

    def _on_membership(self, sender: str, group_id: str, record: bytes, effects: _Effects) -> None:
        group = self._groups.get(group_id)
        admin = group.admin if group is not None else sender
        verified = _crypto.verify_membership(record, self._peer_identity_key(admin))
        if verified["group"] != group_id or verified["admin"] != admin:
            raise IdentityError(
                f"membership record for group {verified['group']!r} by {verified['admin']!r} "
                f"does not come from the administrator of group {group_id!r}"
            )
        epoch, members = int(verified["epoch"]), list(verified["members"])
        if self.agent_id not in members:
            if group is not None and epoch > group.epoch:
                del self._groups[group_id]
                self._touch(group_id)
                self.log.info("agent %r was removed from group %r", self.agent_id, group_id)
            return
        if group is None:
            group = GroupRecord(GroupSession(self.keypair, group_id), admin, epoch, members, record)
            self._groups[group_id] = group
            self._touch(group_id)
            early = self._pending_groups.pop(group_id, None)
            if early:
                group.pending.extend(early)
        elif epoch <= group.epoch:
            raise ReplayError(
                f"membership record of group {group_id!r} is not newer than the one held "
                f"(epoch {epoch} <= {group.epoch})"
            )
        else:
            self._apply_membership(group_id, group, epoch, members, record)
        self._retry_pending(group_id, group, effects)

    def _on_sender_key(
        self, sender: str, group_id: str, distribution: bytes, effects: _Effects
    ) -> None:
        group = self._groups.get(group_id)
        if group is None or sender not in group.members:
            self._hold(group_id, group, ("key", sender, distribution))
            return
        try:
            group.session.install(distribution, sender, self._peer_identity_key(sender))
        except ReplayError:
            self.log.debug("agent %r: group %r: %r's chain again", self.agent_id, group_id, sender)
            return
        self._touch(group_id)
        self._retry_pending(group_id, group, effects)

