"""What the group rooms of the agent core share: the bounds, one group as a member holds it
(:class:`GroupRecord`), what an operation decided to do once its lock is released
(:class:`_Effects`), and :class:`GroupState`, the group state and the methods one group room
calls in another, declared once. The rooms: ``agent_group_membership.py`` (administration and
the control messages), ``agent_group_sending.py``, ``agent_group_receiving.py``; they are
combined by :class:`agentmesh.agent_groups._Groups`.
"""

from __future__ import annotations

import base64
import binascii
import collections
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .agent_state import AgentCoreState
from .errors import FormatError
from .fanout import GroupUpload

if TYPE_CHECKING:  # pragma: no cover
    from .agent_receiving import Rejected
    from .message import Message

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



class _Effects:
    """What a group operation decided under ``_group_lock``, to be done once it is released
    (see ``_Groups._run_effects``): pairwise sends, group message uploads, handler runs."""

    __slots__ = ("messages", "rejections", "sends", "uploads")

    def __init__(self) -> None:
        self.sends: list[tuple[str, dict[str, Any]]] = []
        self.uploads: list[GroupUpload] = []
        self.messages: list[Message] = []
        self.rejections: list[Rejected] = []



class GroupState(AgentCoreState):
    """Declarations only: the values are set by ``_Groups._init_groups``."""

    _groups: dict[str, GroupRecord]
    _pending_groups: collections.OrderedDict[str, collections.deque[tuple[Any, ...]]]
    _group_lock: threading.RLock
    _group_exports_cache: dict[str, dict[str, Any]]
    _dirty_groups: set[str]
    _dirty_groups_lock: threading.Lock
    _transmit: Callable[[Any], Any] | None
    _transport: Any

    if TYPE_CHECKING:  # what one group room calls in another

        def _touch(self, group_id: str) -> None: ...
        def _run_effects(self, effects: _Effects) -> None: ...
        def _require_group(self, group_id: str) -> GroupRecord: ...
        def _on_group_control(
            self, sender: str, payload: dict[str, Any], effects: _Effects
        ) -> None: ...
        def _on_sender_key(
            self, sender: str, group_id: str, distribution: bytes, effects: _Effects
        ) -> None: ...
        def _hold(
            self, group_id: str, group: GroupRecord | None, item: tuple[Any, ...]
        ) -> None: ...
        def _retry_pending(self, group_id: str, group: GroupRecord, effects: _Effects) -> None: ...
        def _open_group(
            self, item: Any, effects: _Effects, dispatch: bool = True
        ) -> Message | Rejected | None: ...

