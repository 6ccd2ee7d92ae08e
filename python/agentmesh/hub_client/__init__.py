"""asyncio client of the agentmesh network hub (the agent layer's ``NetworkHub`` drives it).

One :class:`HubClient` is one connection to the hub: either an unauthenticated *lookup*
connection (:meth:`HubClient.connect_lookup`: bundles, agent list, message count) or an
*agent* connection (:meth:`HubClient.register`: proves possession of the identity key, then
sends and receives envelopes, and answers lookups too).

Sends stream: :meth:`HubClient.send` returns once the envelope is queued and written; the
envelope stays in the client's memory until the hub acknowledges that it is durably stored,
and is resent after a reconnect. :meth:`HubClient.flush` waits for those acknowledgements.
Deliveries are handed to ``on_batch`` in batches, in inbox order, and acknowledged to the hub
once it has handled them. See ``docs/hub.md`` for the protocol and the guarantees.

The rooms: ``client`` (:class:`HubClient`: the connection's life and the public face),
``connection`` (one TCP or TLS connection: frames in and out, liveness), ``connecting`` (the
handshake, registration proof and reconnect backoff), ``send_window`` (sequence numbers,
resends, refusals, flow control, flush), ``delivery`` (batches to ``on_batch``, skipping by
position, acknowledgements) and ``requests`` (lookups waiting for an answer).
"""

from agentmesh.hub_client.client import HubClient
from agentmesh.hub_client.connecting import FATAL_CODES
from agentmesh.hub_protocol import HubRequestError, PeerNotFoundError

__all__ = ["FATAL_CODES", "HubClient", "HubRequestError", "PeerNotFoundError"]
