"""The interface every hub implements (``agentmesh.hubs`` has the hubs themselves)."""

from __future__ import annotations

from typing import Any

__all__ = ["Hub"]


class Hub:
    """The interface every hub implements."""

    #: whether it re-binds an id to a new identity key on succession statements its bound key
    #: signed (``rotate_identity``); a hub that cannot is refused before anything changes
    rotates_identities: bool = False
    #: why it cannot (said by the refusal), when there is more to say than the class's name
    rotation_refused_because: str = ""

    def register(self, agent: Any) -> None:
        """Make ``agent`` reachable (agents call this themselves when given ``hub=``)."""
        raise NotImplementedError

    def unregister(self, agent: Any) -> None:
        """Forget ``agent`` (``close()`` calls this)."""
        raise NotImplementedError

    def deliver(self, envelope: Any) -> None:
        """Route one sealed envelope (an Envelope or its bytes) to its recipient."""
        raise NotImplementedError

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """The public bundle of ``agent_id``, or ``None``."""
        raise NotImplementedError

    def claim_bundle(self, requester_id: str, agent_id: str) -> dict[str, Any] | None:
        """The bundle ``requester_id`` sets up a new session with: ``get_bundle`` plus, where
        the hub keeps them, one of ``agent_id``'s one-time prekeys, handed out only this once.
        (LocalHub has none: its envelopes never leave the process.)"""
        return self.get_bundle(agent_id)

    def list_agents(self) -> list[str]:
        """Ids of the registered agents."""
        raise NotImplementedError

    def is_online(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is registered and connected now (a hub that cannot tell:
        whether it is registered)."""
        return agent_id in self.list_agents()

    def message_count(self) -> int:
        """Envelopes routed so far."""
        raise NotImplementedError
