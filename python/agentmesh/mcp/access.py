"""Who may call an MCP server an agent serves: agent ids, fingerprints, or a callable.

The caller's id is the authenticated sender of its messages (signature or session keys), and
its fingerprint is that of the identity key this agent pinned for it (trust on first use), so
a hub cannot pass one agent off as another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..agent_rules import _fingerprint_of_key, _normalize_fingerprint

__all__ = ["AccessPolicy", "AllowCallable", "any_agent"]

#: ``allow(agent_id, fingerprint) -> bool``: a policy of your own.
AllowCallable = Callable[[str, str], bool]


def any_agent(agent_id: str, fingerprint: str) -> bool:
    """``allow=any_agent``: every agent that can reach this one may call its MCP server."""
    return True


class AccessPolicy:
    """``allow`` (agent ids, or a callable ``(agent_id, fingerprint) -> bool``) and
    ``allow_fingerprints``; a caller is admitted when any of them admits it."""

    def __init__(
        self,
        allow: Iterable[str] | AllowCallable | None,
        allow_fingerprints: Iterable[str] | None,
    ) -> None:
        self._check: AllowCallable | None = None
        self._ids: frozenset[str] = frozenset()
        if callable(allow):
            self._check = allow
        elif allow is not None:
            if isinstance(allow, str):
                raise TypeError(
                    f"allow must be a list of agent ids or a callable, not the str {allow!r} "
                    f"(did you mean allow=[{allow!r}]?)"
                )
            ids = list(allow)
            for agent_id in ids:
                if not isinstance(agent_id, str) or not agent_id:
                    raise TypeError(f"allow: {agent_id!r} is not an agent id")
            self._ids = frozenset(ids)
        fingerprints: set[str] = set()
        if allow_fingerprints is not None:
            if isinstance(allow_fingerprints, str):
                raise TypeError("allow_fingerprints must be a list of fingerprints, not a str")
            for fp in allow_fingerprints:
                normal = _normalize_fingerprint(fp) if isinstance(fp, str) else ""
                if len(normal) != 32:
                    raise ValueError(
                        f"allow_fingerprints: {fp!r} is not a fingerprint "
                        "(xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx)"
                    )
                fingerprints.add(normal)
        self._fingerprints = frozenset(fingerprints)
        if self._check is None and not self._ids and not self._fingerprints:
            raise ValueError(
                "say which agents may call this MCP server: allow=['bob', ...], "
                "allow_fingerprints=[...], or allow=callable(agent_id, fingerprint) "
                "(agentmesh.mcp.any_agent admits every agent)"
            )

    def admits(self, agent_id: str, identity_key: Any) -> bool:
        """Whether ``agent_id``, whose pinned identity key is ``identity_key``, may call."""
        if agent_id in self._ids:
            return True
        fingerprint = _fingerprint_of_key(identity_key) if isinstance(identity_key, str) else "?"
        if self._fingerprints and _normalize_fingerprint(fingerprint) in self._fingerprints:
            return True
        return self._check is not None and bool(self._check(agent_id, fingerprint))
