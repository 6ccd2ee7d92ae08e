"""The group a user holds: :class:`Group` (for :class:`~agentmesh.Agent`) and :class:`AsyncGroup`
(for :class:`~agentmesh.AsyncAgent`). Thin faces over the agent core's groups
(``agent_groups.py`` and its rooms); the cryptography is the Rust core's (docs/protocol.md
section 8).

A group message is sealed and signed once and handed to the hub once; the hub fans it out, the
same sealed bytes to every other member (only the routing recipient differs). Members receive
ordinary :class:`~agentmesh.Message` objects with ``msg.group`` set, through the same
``on_message`` handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .agent_core import _AgentCore

__all__ = ["AsyncGroup", "Group"]


class _GroupFace:
    __slots__ = ("_core", "id")

    def __init__(self, core: _AgentCore, group_id: str) -> None:
        self._core = core
        #: the group id (what ``msg.group`` carries)
        self.id = group_id

    @property
    def members(self) -> list[str]:
        """Every member, this agent and the creator included, sorted."""
        return self._core.group_members(self.id)

    @property
    def admin(self) -> str:
        """The creator: the one member who changes the membership."""
        return self._core.group_admin(self.id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _GroupFace):
            return NotImplemented
        return self._core is other._core and self.id == other.id

    def __hash__(self) -> int:
        return hash((id(self._core), self.id))

    def __repr__(self) -> str:
        try:
            members = self.members
        except ValueError:
            return f"<{type(self).__name__} {self.id!r} (no longer a member)>"
        return f"<{type(self).__name__} {self.id!r} admin={self.admin!r} members={members!r}>"


class Group(_GroupFace):
    """A group of an :class:`~agentmesh.Agent`: ``agent.create_group(...)``,
    ``agent.group(id)`` or ``agent.groups()``."""

    __slots__ = ()

    def send(self, text: str = "", **payload: Any) -> Any:
        """Send ``{"text": text, **payload}`` to every other member; returns the sealed
        GroupEnvelope."""
        return self._core.group_send(self.id, {"text": text, **payload})

    def send_payload(self, payload: dict[str, Any]) -> Any:
        """Send a payload dict as it is (``TypeError`` if it cannot be serialised)."""
        return self._core.group_send(self.id, payload)

    def add(self, member: str) -> None:
        """Add ``member`` (creator only). It reads what is sent from now on, nothing earlier."""
        self._core.group_add(self.id, member)

    def remove(self, member: str) -> None:
        """Remove ``member`` (creator only). Every remaining member starts a new sending chain
        before its next message, so ``member`` cannot read anything sent after it learns of the
        removal."""
        self._core.group_remove(self.id, member)

    def leave(self) -> None:
        """Leave the group (any member but the creator): the creator removes this member."""
        self._core.group_leave(self.id)


class AsyncGroup(_GroupFace):
    """A group of an :class:`~agentmesh.AsyncAgent`; the same calls, awaitable."""

    __slots__ = ("_run",)

    def __init__(self, core: _AgentCore, group_id: str, run: Any) -> None:
        super().__init__(core, group_id)
        self._run = run

    async def send(self, text: str = "", **payload: Any) -> Any:
        return await self._run(self._core.group_send, self.id, {"text": text, **payload})

    async def send_payload(self, payload: dict[str, Any]) -> Any:
        return await self._run(self._core.group_send, self.id, payload)

    async def add(self, member: str) -> None:
        await self._run(self._core.group_add, self.id, member)

    async def remove(self, member: str) -> None:
        await self._run(self._core.group_remove, self.id, member)

    async def leave(self) -> None:
        await self._run(self._core.group_leave, self.id)
