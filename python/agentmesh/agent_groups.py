"""Groups: the agent core's part (membership, sender keys over the pairwise sessions, sealing
once for every member, opening group messages, persistence of the group state).

A part of the agent core (:class:`agentmesh.agent._AgentCore`), which combines the rooms; its
methods run on the core and share its state. The face users hold is :class:`agentmesh.groups.Group`;
the cryptography is the Rust core's (``GroupSession``, docs/protocol.md section 8).

Control messages (membership records, sender-key distributions, a member leaving) travel as
ordinary pairwise payloads of the reserved type :data:`GROUP_CONTROL_TYPE`; they never reach the
message handlers.
"""

from __future__ import annotations

import base64
import binascii
import collections
import threading
from collections.abc import Callable
from typing import Any

from . import crypto as _crypto
from .agent_receiving import Rejected
from .agent_requests import check_no_meta
from .agent_rules import MAX_ENVELOPE_BYTES
from .agent_state import AgentCoreState
from .errors import (
    AuthenticationError,
    CryptoError,
    FormatError,
    IdentityError,
    MessageTooLargeError,
    ReplayError,
)
from .fanout import GroupUpload, unaddressed
from .message import META_KEY, Message

Envelope = _crypto.Envelope
GroupEnvelope = _crypto.GroupEnvelope
GroupSession = _crypto.GroupSession

#: The pairwise payload type of group control messages (reserved: never a user message).
GROUP_CONTROL_TYPE = "agentmesh.group"
#: Group messages and sender keys held back per group until what explains them arrives: the
#: membership record that adds their sender (a network hub orders each sender's envelopes, not
#: different senders'), or the sender key of a message's chain. The oldest go first past this
#: bound. Held in memory only.
MAX_PENDING_PER_GROUP = 256
#: Groups not known yet (no invitation arrived) whose early messages are held back, and how
#: many each (anyone on the hub can send them).
MAX_PENDING_GROUPS = 8
MAX_PENDING_PER_UNKNOWN_GROUP = 64
#: Larger early arrivals are refused rather than held (the holding is in memory).
MAX_HELD_BYTES = 64 * 1024


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


class GroupRecord:
    """One group as this member holds it."""

    __slots__ = (
        "_others",
        "_others_of",
        "admin",
        "distributed",
        "epoch",
        "members",
        "pending",
        "record",
        "session",
    )

    def __init__(
        self, session: Any, admin: str, epoch: int, members: list[str], record: bytes
    ) -> None:
        self.session = session
        self.admin = admin
        self.epoch = epoch
        self.members = members
        self.record = record
        #: members that hold this member's current sending chain
        self.distributed: set[str] = set()
        #: early arrivals ("key", sender, data) or ("msg", env): from senders not members yet, or
        #: messages whose sender key has not arrived
        self.pending: collections.deque[tuple[Any, ...]] = collections.deque(
            maxlen=MAX_PENDING_PER_GROUP
        )
        self._others: list[str] = []
        self._others_of: list[str] | None = None

    def others(self, me: str) -> list[str]:
        """The members but ``me`` (kept until the member list is replaced: a group message
        to many members does not walk it again)."""
        if self._others_of is not self.members:
            self._others = [m for m in self.members if m != me]
            self._others_of = self.members
        return self._others


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"group control message: {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"group control message: {what} is not valid base64") from None


def _is_group_envelope(item: Any) -> bool:
    kind = type(item)
    if kind is Envelope:
        return False
    if kind is GroupEnvelope:
        return True
    if isinstance(item, bytes):
        return bool(GroupEnvelope.is_group_message(item))
    if isinstance(item, (bytearray, memoryview)):
        return bool(GroupEnvelope.is_group_message(bytes(item)))
    return False


class _Effects:
    """What a group operation decided under ``_group_lock``, to be done once it is released
    (see ``_Groups._run_effects``): pairwise sends, group message uploads, handler runs."""

    __slots__ = ("messages", "rejections", "sends", "uploads")

    def __init__(self) -> None:
        self.sends: list[tuple[str, dict[str, Any]]] = []
        self.uploads: list[GroupUpload] = []
        self.messages: list[Message] = []
        self.rejections: list[Rejected] = []


class _Groups(AgentCoreState):
    """Groups (see the module)."""

    _groups: dict[str, GroupRecord]
    _pending_groups: collections.OrderedDict[str, collections.deque[tuple[Any, ...]]]
    _group_lock: threading.RLock
    _user_dispatch: Callable[[Message], Any]
    _transmit: Callable[[Any], Any] | None
    _transport: Any

    def _init_groups(self) -> None:
        self._groups = {}
        self._pending_groups = collections.OrderedDict()
        # one group operation at a time (a membership change never interleaves with a seal);
        # what an operation sends or dispatches happens after it is released (_run_effects)
        self._group_lock = threading.RLock()
        # group id -> its entry in the state file, re-exported only when the group changed
        self._group_exports_cache: dict[str, dict[str, Any]] = {}
        self._dirty_groups: set[str] = set()
        self._dirty_groups_lock = threading.Lock()  # (a leaf: taken under either other lock)

    def _touch(self, group_id: str) -> None:
        """The group changed (or is gone): the next state write exports it again."""
        with self._dirty_groups_lock:
            self._dirty_groups.add(group_id)
        self._meta_dirty = True

    # -- the dispatch filter: control messages never reach a handler ----------------------------

    @property  # type: ignore[override]
    def _dispatch(self) -> Callable[[Message], Any]:
        return self._dispatch_or_control

    @_dispatch.setter
    def _dispatch(self, fn: Callable[[Message], Any]) -> None:
        # The faces install their dispatcher here (AsyncAgent replaces the core's): it becomes
        # the one that group and ordinary messages reach once control messages are filtered out.
        self._user_dispatch = fn

    def _dispatch_or_control(self, msg: Message) -> None:
        payload = msg.payload
        if msg.group is None and payload.get("type") == GROUP_CONTROL_TYPE:
            effects = _Effects()
            try:
                with self._group_lock:
                    self._on_group_control(msg.sender, payload, effects)
            except (CryptoError, ValueError, TypeError) as exc:
                self.reject(exc, msg.envelope)
            self._run_effects(effects)
            return
        self._user_dispatch(msg)

    def _run_effects(self, effects: _Effects) -> None:
        """What a group operation decided under ``_group_lock``, done after it is released: on a
        LocalHub a send runs the recipient's core (and its handlers) in this thread, and two
        agents sending to each other from two threads must not hold each other's lock."""
        for peer, payload in effects.sends:
            try:
                self.send_payload(peer, payload)
            except Exception as exc:  # one member out of reach does not stop the others
                if payload.get("op") == "sender_key":
                    with self._group_lock:  # (handed out again before the next message)
                        group = self._groups.get(payload["group"])
                        if group is not None:
                            group.distributed.discard(peer)
                self.log.warning(
                    "agent %r: a group %s did not reach %r: %s",
                    self.agent_id,
                    payload.get("op"),
                    peer,
                    exc,
                )
        for upload in effects.uploads:
            try:
                self._transmit_group(upload)
            except Exception as exc:
                self.log.warning("agent %r: a group message: %s", self.agent_id, exc)
        for rejected in effects.rejections:
            self.reject(rejected.error, rejected.envelope)
        for msg in effects.messages:
            self._user_dispatch(msg)
        if effects.messages and self._autosave:
            self._maybe_autosave()

    # -- administration -------------------------------------------------------------------------

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

    def _hold(self, group_id: str, group: GroupRecord | None, item: tuple[Any, ...]) -> None:
        if group is not None:
            group.pending.append(item)
            return
        pending = self._pending_groups
        queue = pending.get(group_id)
        if queue is None:
            queue = pending[group_id] = collections.deque(maxlen=MAX_PENDING_PER_UNKNOWN_GROUP)
            while len(pending) > MAX_PENDING_GROUPS:
                pending.popitem(last=False)
        queue.append(item)

    def _retry_pending(self, group_id: str, group: GroupRecord, effects: _Effects) -> None:
        if not group.pending:
            return
        items = list(group.pending)
        group.pending.clear()
        for item in items:
            if item[0] == "key":
                self._on_sender_key(item[1], group_id, item[2], effects)
            else:
                outcome = self._open_group(item[1], effects)
                if isinstance(outcome, Rejected):
                    effects.rejections.append(outcome)

    # -- sending ----------------------------------------------------------------------------------

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
                upload = GroupUpload(unaddressed(env.to_bytes_for(others[0])), others, env.counter)
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

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, envelope: Any) -> Message | None:
        if _is_group_envelope(envelope):
            return self._receive_group(envelope)
        return super().receive(envelope)  # type: ignore[misc, no-any-return]

    def receive_batch(
        self, envelopes: list[Any], dispatch: bool = True
    ) -> list[Message | Rejected | None]:
        """The receiving room's ``receive_batch``, with group messages opened here. With
        ``dispatch=False`` (the network receive path, which runs the handlers later) a group
        message counts as unhandled like a pairwise one, so no group state is saved past it
        before its handlers ran (``_group_exports``)."""
        kinds = [_is_group_envelope(e) for e in envelopes]
        if not any(kinds):
            return super().receive_batch(envelopes, dispatch)  # type: ignore[misc, no-any-return]
        # in runs, in order (the handlers of one run before the next run is opened)
        out: list[Message | Rejected | None] = []
        start = 0
        n = len(envelopes)
        while start < n:
            end = start
            while end < n and kinds[end] == kinds[start]:
                end += 1
            run = envelopes[start:end]
            if not kinds[start]:
                out.extend(super().receive_batch(run, dispatch))  # type: ignore[misc]
            elif dispatch:
                out.extend(self._receive_group(e) for e in run)
            else:
                out.extend(self._open_held(e) for e in run)
            start = end
        return out

    def _receive_group(self, item: Any) -> Message | None:
        """Open one group message and run the handlers (None: refused, or held back until its
        membership record or sender key arrives)."""
        effects = _Effects()
        with self._group_lock:
            outcome = self._open_group(item, effects)
        if isinstance(outcome, Rejected):
            self.reject(outcome.error, outcome.envelope)
        self._run_effects(effects)
        return outcome if isinstance(outcome, Message) else None

    def _open_held(self, item: Any) -> Message | Rejected | None:
        """Open one group message whose handlers run later (``receive_batch(dispatch=False)``)."""
        effects = _Effects()
        with self._group_lock:
            outcome = self._open_group(item, effects, dispatch=False)
            if isinstance(outcome, Message):
                with self._lock:
                    self._unhandled[outcome.sender] += 1  # (handled_from counts it down)
        self._run_effects(effects)
        return outcome

    def _open_group(
        self, item: Any, effects: _Effects, dispatch: bool = True
    ) -> Message | Rejected | None:
        """(The caller holds _group_lock.) The message if it opened (with ``dispatch``, also
        queued in ``effects`` for the handlers), a rejection, or None: held back."""
        env = item
        try:
            if type(env) is not GroupEnvelope:
                env = GroupEnvelope.from_bytes(bytes(item))
            group = self._groups.get(env.group)
            if (
                group is None
                or env.sender not in group.members
                or not group.session.knows_chain(env.sender, env.chain_id)
            ):
                # early: its membership record or its sender key is still on the way
                if len(env.to_bytes()) > MAX_HELD_BYTES:
                    raise AuthenticationError(
                        f"group message from {env.sender!r} on a chain this member does not "
                        f"hold, too large ({MAX_HELD_BYTES} bytes at most) to wait for its key"
                    )
                self._hold(env.group, group, ("msg", env))
                return None
            payload = group.session.open(env)
            self.received += 1
            self._touch(env.group)
        except CryptoError as exc:
            return Rejected(exc, env)
        if payload.get("type") == GROUP_CONTROL_TYPE or META_KEY in payload:
            error = AuthenticationError(
                "a group message may not carry a control payload or agentmesh's own fields"
            )
            return Rejected(error, env)
        msg = Message(env.sender, self.agent_id, payload, env, self, {}, env.group)
        if dispatch:
            effects.messages.append(msg)
        return msg

    # -- introspection and persistence ------------------------------------------------------------

    def groups(self) -> list[str]:
        with self._group_lock:
            return sorted(self._groups)

    def group_members(self, group_id: str) -> list[str]:
        with self._group_lock:
            return list(self._require_group(group_id).members)

    def group_admin(self, group_id: str) -> str:
        with self._group_lock:
            return self._require_group(group_id).admin

    def _group_exports(self) -> dict[str, dict[str, Any]]:
        # Called by the state writer under the core's _lock, which a group send takes inside
        # _group_lock (sealing a sender key): taking _group_lock here would invert that order.
        # Each GroupSession locks itself; a group changed meanwhile is touched again and written
        # with the next state write.
        cache = self._group_exports_cache
        if self._unhandled:
            # messages unsealed whose handlers have not run: no group state is saved past
            # them (like the sessions, see handled_from); the groups stay dirty for later
            self._meta_dirty = True
            return dict(cache)
        with self._dirty_groups_lock:
            dirty, self._dirty_groups = self._dirty_groups, set()
        for group_id in dirty:
            group = self._groups.get(group_id)
            if group is None:
                cache.pop(group_id, None)
                continue
            cache[group_id] = {
                "admin": group.admin,
                "epoch": group.epoch,
                "members": list(group.members),
                "record": _b64(group.record),
                "state": _b64(group.session.export_sealed()),
            }
        return dict(cache)

    def _load_groups(self, saved: dict[str, dict[str, Any]]) -> None:
        """Restore the groups of the state file. The membership record is checked again under
        the administrator's pinned key; each loaded state starts a new sending chain."""
        from .errors import KeyFileError

        groups: dict[str, GroupRecord] = {}
        for group_id, doc in saved.items():
            try:
                record = _unb64(doc["record"], "record")
                admin = str(doc["admin"])
                admin_key = (
                    bytes(self.keypair.identity_key)
                    if admin == self.agent_id
                    else base64.b64decode(self._pins[admin])
                )
                verified = _crypto.verify_membership(record, admin_key)
                session = GroupSession.import_state(self.keypair, _unb64(doc["state"], "state"))
            except (KeyError, TypeError, ValueError, CryptoError) as exc:
                raise KeyFileError(
                    f"state file: group {group_id!r} cannot be restored ({exc}); the file was "
                    "left untouched"
                ) from exc
            groups[group_id] = GroupRecord(
                session, admin, int(verified["epoch"]), list(verified["members"]), record
            )
        self._groups = groups
        # (loaded exports never hold a sending chain, so they stay valid as they are)
        self._group_exports_cache = {group_id: dict(saved[group_id]) for group_id in groups}
