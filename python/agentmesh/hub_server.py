"""The agentmesh network hub: directory, durable store-and-forward and routing over TCP (+TLS).

Run it as ``agentmesh-hub --host H --port P --store PATH`` (or ``python -m agentmesh.hub_server``)
or embed it::

    server = NetworkHubServer(port=0)
    server.start(block=False)      # returns once it listens
    print(server.port)
    ...
    server.stop()

The hub sees public bundles and routes opaque envelopes; it never holds a key that could open or
forge one. The design (framing, registration, group commit, delivery before commit, limits) is
described in ``docs/hub.md``; the code lives in the package :mod:`agentmesh.hub`, one idea per
module (``docs/architecture.md``). This module is its public face: the import path and the
``python -m`` entry point.
"""

from __future__ import annotations

from agentmesh.hub.cli import main
from agentmesh.hub.limits import HubLimits
from agentmesh.hub.server import NetworkHubServer

__all__ = ["HubLimits", "NetworkHubServer", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
