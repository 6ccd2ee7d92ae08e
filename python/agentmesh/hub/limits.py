"""Every bound the hub enforces, in one place: :class:`HubLimits` (also ``NetworkHubServer``
keywords and ``agentmesh-hub`` flags). What happens at each bound: ``docs/hub.md#limits``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agentmesh.hub_protocol import DEFAULT_MAX_FRAME_SIZE

__all__ = ["HubLimits", "MiB"]

MiB = 1024 * 1024

#: Limits where 0 means "off" rather than nothing allowed.
_MAY_BE_ZERO = frozenset(
    {"max_fanout_bytes", "max_channels_per_connection", "expired_sweep_interval"}
)


@dataclass
class HubLimits:
    """Every bound the hub enforces. Defaults suit one hub serving thousands of agents."""

    #: Largest frame (type byte + body) accepted from a client. An envelope can be up to this
    #: minus 265 bytes (SEND header and recipient id).
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Open connections (handshaking, lookup and agent); one more gets an ERROR and is closed.
    max_connections: int = 1024
    #: Connections still in their handshake (before READY). They need no proof, so a small
    #: share of ``max_connections``: a flood of them cannot keep agents out.
    max_handshaking: int = 128
    #: Lookup-only connections (unauthenticated, kept alive by answering pings).
    max_lookup_connections: int = 128
    #: Agents one connection may carry as channels (docs/hub.md#shared-connections); 0: the
    #: hub offers no channels, so every agent holds a connection of its own.
    max_channels_per_connection: int = 1024
    #: Handshaking plus lookup connections from one IP address.
    max_unauthenticated_per_address: int = 32
    #: Outgoing bytes buffered for a handshaking or lookup connection before the hub stops
    #: reading and answering it (agents get ``max_write_buffer`` once registered).
    max_lookup_write_buffer: int = 256 * 1024
    #: Agent ids in one LIST_AGENTS answer (a page; the answer names where the next begins).
    max_list_agents: int = 1000
    #: Seconds from TCP accept to a completed HELLO + REGISTER/LOOKUP (TLS handshake included).
    handshake_timeout: float = 10.0
    #: A connection that sends no complete frame for this long is closed. Clients answer the
    #: hub's pings, so a live idle client is never dropped.
    idle_timeout: float = 60.0
    #: The hub pings a connection that has been silent for this long (must be < idle_timeout).
    ping_interval: float = 20.0
    #: Envelopes queued (not yet acknowledged) for one agent; beyond it sends are refused with
    #: an "inbox full" SEND_ERROR.
    max_queued_per_agent: int = 100_000
    #: Bytes queued for one agent, same treatment.
    max_queued_bytes_per_agent: int = 1024 * MiB
    #: Seconds between background purges of offline recipients' envelopes whose sender-set
    #: expiry has passed (one purge of at most 1024 of them in flight at a time). 0: no
    #: background purge (a send to a full inbox still purges that inbox first).
    expired_sweep_interval: float = 60.0
    #: Deliveries in flight (sent, not acknowledged) per recipient connection.
    delivery_window: int = 1024
    #: Envelopes held in memory for an online recipient beyond the window; past it the hub
    #: reads them back from the store when the recipient catches up.
    delivery_buffer: int = 8192
    #: Outgoing bytes buffered per connection before the hub stops delivering to it and stops
    #: reading from it (backpressure).
    max_write_buffer: int = 8 * MiB
    #: Bytes of envelopes received from one connection and not yet committed; past it the hub
    #: stops reading from that connection until the store catches up.
    max_uncommitted_bytes: int = 32 * MiB
    #: Bytes of the copies one SEND_GROUP may store in all (members x envelope size); past
    #: it the whole upload is refused (SEND_ERROR). READY tells clients, which split a larger
    #: fan-out. 0 turns fan-out off: clients then send each member's copy as its own SEND.
    max_fanout_bytes: int = 64 * MiB
    #: Distinct agent ids the directory accepts.
    max_agents: int = 1_000_000
    #: Concurrent lookup requests per connection.
    max_pending_requests: int = 256
    #: One-time prekeys held per agent; the rest of an upload beyond it is ignored (the answer
    #: tells the agent how many are held, and READY the limit).
    max_prekeys_per_agent: int = 100
    #: One-time prekeys one agent id may claim per minute, across all its connections (a
    #: reconnect does not reset it); beyond it, and for a second claim of the same peer within
    #: the minute, the bundle comes without one.
    max_prekey_claims_per_minute: int = 60
    #: One-time prekeys handed out of one agent's stock per minute, whoever asks: many fresh
    #: ids cannot empty a stock faster than this. Beyond it bundles come without one.
    max_prekey_claims_per_target_per_minute: int = 30

    def validate(self) -> HubLimits:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"HubLimits.{f.name} must be a number, got {value!r}")
            if value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                what = "0 or more" if f.name in _MAY_BE_ZERO else "a positive number"
                raise ValueError(f"HubLimits.{f.name} must be {what}, got {value!r}")
        if self.ping_interval >= self.idle_timeout:
            raise ValueError("HubLimits.ping_interval must be smaller than idle_timeout")
        if self.max_frame_size < 4096:
            raise ValueError("HubLimits.max_frame_size must be at least 4096")
        return self
