"""Groups: the agent core's part (membership, sender keys over the pairwise sessions, sealing
once for every member, opening group messages, persistence of the group state).

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state. The face users hold is :class:`agentmesh.groups.Group`;
the cryptography is the Rust core's (``GroupSession``, docs/protocol.md section 8). The group
rooms: ``agent_group_membership.py`` (administration, control messages),
``agent_group_sending.py``, ``agent_group_receiving.py``, what they share in
``agent_group_state.py``; this module combines them and holds the dispatch filter, the effects
run once the group lock is released, introspection and persistence.

Control messages (membership records, sender-key distributions, a member leaving) travel as
ordinary pairwise payloads of the reserved type :data:`GROUP_CONTROL_TYPE`; they never reach the
message handlers.
"""

from __future__ import annotations

import base64
import collections
import threading
from typing import Any

from . import crypto as _crypto
from .agent_group_membership import _GroupMembership
from .agent_group_receiving import _GroupReceiving
from .agent_group_sending import AddressedGroupMessage, _GroupSending
from .agent_group_state import (  # noqa: F401 (the bounds keep their import path)
    GROUP_CONTROL_TYPE,
    MAX_HELD_BYTES,
    MAX_PENDING_GROUPS,
    MAX_PENDING_PER_GROUP,
    MAX_PENDING_PER_UNKNOWN_GROUP,
    GroupRecord,
    _b64,
    _Effects,
    _unb64,
)
from .errors import CryptoError
from .message import Message

__all__ = ["GROUP_CONTROL_TYPE", "AddressedGroupMessage", "GroupRecord"]

GroupSession = _crypto.GroupSession


class _Groups(_GroupMembership, _GroupSending, _GroupReceiving):
    """Groups (see the module)."""

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

    def _dispatch(self, msg: Message) -> None:
        """Hand ``msg`` to the handlers (``_user_dispatch``, which the faces install), unless
        it is a group control message: those are applied here and never reach a handler."""
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

