"""The agentmesh network hub server, one idea per module (``docs/architecture.md``):

- :mod:`~agentmesh.hub.limits`: :class:`HubLimits`, every bound the hub enforces;
- :mod:`~agentmesh.hub.server`: :class:`NetworkHubServer`, listening and the lifecycle;
- :mod:`~agentmesh.hub.in_process`: the server's own hub interface for agents in its process;
- :mod:`~agentmesh.hub.core`: what all connections of a running hub share;
- :mod:`~agentmesh.hub.connection_table`: connection caps, timeouts and pings;
- :mod:`~agentmesh.hub.connection`: one connection's frame state machine and output batching;
- :mod:`~agentmesh.hub.registration`: proving an identity and becoming its connection;
- :mod:`~agentmesh.hub.intake`: accepting sends (quotas, SEND_ACK);
- :mod:`~agentmesh.hub.delivery`: the delivery pump;
- :mod:`~agentmesh.hub.requests`: lookups, claims, prekeys, listings, the directory policy;
- :mod:`~agentmesh.hub.cli`: the ``agentmesh-hub`` command line.

The wire format is :mod:`agentmesh.hub_protocol`, the store :mod:`agentmesh.hub_store`.
``agentmesh.hub_server`` re-exports :class:`NetworkHubServer`, :class:`HubLimits` and ``main``
and runs the command line as ``python -m agentmesh.hub_server``.
"""

from agentmesh.hub.cli import main
from agentmesh.hub.limits import HubLimits
from agentmesh.hub.server import NetworkHubServer

__all__ = ["HubLimits", "NetworkHubServer", "main"]
