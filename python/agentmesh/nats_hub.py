"""``NatsHub``: agents on a NATS JetStream cluster, with the interface of every hub.

A thin face, like :class:`~agentmesh.hubs.NetworkHub`: each agent registered through it gets
its own :class:`~agentmesh.nats_backend.NatsBackend`, driven by an
:class:`~agentmesh.link.AgentLink` (which holds every agent-side rule), and the hub keeps
one more connection for lookups. ``Agent`` does not change: pass
``hub=NatsHub(["nats://127.0.0.1:4222"])``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .backend_hub import BackendHub
from .nats_backend import NatsBackend
from .nats_layout import DEFAULT_MAX_QUEUED, NatsLayout
from .nats_setup import NatsSettings

__all__ = ["NatsHub"]

log = logging.getLogger("agentmesh.nats")


def _check_servers(servers: Sequence[str] | str) -> list[str]:
    found = [servers] if isinstance(servers, str) else list(servers)
    if not found or not all(isinstance(s, str) and s.strip() for s in found):
        raise ValueError(
            f"servers must be NATS URLs such as 'nats://127.0.0.1:4222', not {servers!r}"
        )
    return [s.strip() for s in found]


class NatsHub(BackendHub):
    """Agents on a NATS JetStream cluster; same interface as :class:`LocalHub`.

    ``NatsHub(servers, *, prefix="agentmesh", replicas=None, max_queued_per_agent=100_000,
    connect_timeout=10.0, timeout=30.0, auth=False)``. ``servers``: one URL or a list (any of the
    cluster's; the client learns the others). ``prefix`` names the stream and buckets (several
    deployments can share an account). ``replicas``: of the stream and buckets when this hub
    creates them (None: 3 on a cluster, 1 on a lone server). ``timeout`` bounds lookups.
    ``auth=True``: the cluster is guarded by the agentmesh authorization service (``agentmesh
    nats-auth``): each agent connects with a proof of its identity key and gets only its own
    permissions (docs/nats.md); without it, every client of the cluster is trusted.

    At start it connects, checks the settings it can see (server version, ``max_payload``,
    replicas; docs/nats.md) and creates the stream and buckets if they are missing: a
    cluster that would lose acknowledged envelopes is a :class:`HubError` naming the setting.
    """

    # The directory re-binds an id only on succession statements from its bound key, but on a
    # cluster without the authorization service any client may write the directory's keys: a
    # thief holding a key its agent rotated away from could write a statement from it to a
    # key of his own, which peers not yet following the rotation would follow. Behind the
    # service agents write nothing there themselves, and the service writes only for the key
    # the directory binds (nats_auth_writes): rotation is offered there only (``__init__``).
    rotation_refused_because = (
        "rotation on NATS needs the authorization service (NatsHub(..., auth=True)): without "
        "it every client of the cluster may write the directory, so the key rotated away from "
        "could still sign the id over to another; rotate behind the service, on a LocalHub or "
        "network hub, or start a new id"
    )

    def __init__(
        self,
        servers: Sequence[str] | str,
        *,
        prefix: str = "agentmesh",
        replicas: int | None = None,
        max_queued_per_agent: int = DEFAULT_MAX_QUEUED,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
        auth: bool = False,
    ) -> None:
        self.servers = _check_servers(servers)
        self.auth = bool(auth)
        self.rotates_identities = self.auth
        self.settings = NatsSettings(
            layout=NatsLayout(prefix),
            replicas=replicas,
            max_queued_per_agent=max_queued_per_agent,
        )
        super().__init__()
        self.where = f"the NATS cluster at {', '.join(self.servers)}"
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self._lookup = self._new_backend()
        self._run_request("connecting", self._lookup.connect_lookup())

    def __repr__(self) -> str:
        return f"<NatsHub {','.join(self.servers)} agents={len(self._links)}>"

    def _new_backend(self) -> NatsBackend:
        return NatsBackend(
            self.servers,
            settings=self.settings,
            connect_timeout=self.connect_timeout,
            request_timeout=self.timeout,
            auth=self.auth,
        )

    @property
    def request_bound(self) -> float:
        # a lookup's first use may have to connect first
        return self.timeout + self.connect_timeout

    def _close_lookups(self) -> None:
        self._net.run(self._lookup.close(timeout=1.0), timeout=10.0)

    # -- lookups --------------------------------------------------------------------------------

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        result = self._run_request(f"looking up {agent_id!r}", self._lookup.get_bundle(agent_id))
        return dict(result) if result is not None else None

    def claim_bundle(self, requester_id: str, agent_id: str) -> dict[str, Any] | None:
        if requester_id not in self._links:
            return self.get_bundle(agent_id)
        return self._claim_on_link(requester_id, agent_id)  # type: ignore[no-any-return]

    def list_agents(self) -> list[str]:
        return list(self._run_request("listing agents", self._lookup.list_agents()))

    def is_online(self, agent_id: str) -> bool:
        what = f"asking whether {agent_id!r} is online"
        return bool(self._run_request(what, self._lookup.is_online(agent_id)))

    def message_count(self) -> int:
        return int(self._run_request("counting messages", self._lookup.message_count()))

    def __enter__(self) -> NatsHub:
        return self
