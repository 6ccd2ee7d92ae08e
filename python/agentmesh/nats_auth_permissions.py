"""What a connection may do on a NATS cluster guarded by the agentmesh authorization service.

Allow lists, templated from the layout (:mod:`agentmesh.nats_layout`); everything else is
denied. An *agent* (one that proved its identity key) may:

* publish envelopes as itself only: ``<prefix>.inbox.*.<own token>``;
* consume only its own inbox: fetch from and acknowledge on its own consumer (which the
  service creates: no agent may create, replace or delete a consumer);
* read the directory and the prekey stock; write nothing there itself: it asks the service to
  write its own bundle and one-time prekeys, on a subject naming the identity key it proved
  (``<prefix>.svc.write.<kind>.<own token>.<key>``), and the service refuses a key the
  directory no longer binds (so a connection made with a key rotated away cannot write);
* ask the service for another agent's one-time prekey (``<prefix>.svc.claim.<own token>``);
* receive replies only under its own reply prefix (``_INBOX.<own hash>``).

A *reader* (a connection without a proof: ``NatsHub``'s lookups) may read the directory and
the buckets' information, ask the service for the inbox stream's settings and for presence,
and receive replies under ``_INBOX.reader``.

Nobody may read the inbox stream's information or another agent's consumer's: the first
counts envelopes per inbox subject (recipient and sender), the second tells an agent's traffic.

Nobody may purge or delete a stream, touch another agent's consumer, subscribe to an inbox
subject, or publish to any other JetStream API.
"""

from __future__ import annotations

from .nats_auth_jwt import Permissions
from .nats_layout import NatsLayout, token_of

__all__ = ["READER_REPLY_PREFIX", "WRITE_KINDS", "agent_permissions", "reader_permissions"]

#: The reply prefix of connections without an agent (lookups).
READER_REPLY_PREFIX = "_INBOX.reader"
#: What an agent asks the service to write for it.
WRITE_KINDS = ("bundle", "prekeys")


def _reading(layout: NatsLayout) -> list[str]:
    directory = f"KV_{layout.directory_bucket}"
    # Not the inbox stream's information: asked with a subjects filter it counts the envelopes
    # queued per subject, and an inbox subject names recipient and sender; nor any consumer's:
    # its counters and times tell an agent's traffic. The service answers both questions
    # agents have (the stream's settings, and whether an agent is online) without either.
    return [
        f"$JS.API.STREAM.INFO.{directory}",
        f"$JS.API.STREAM.INFO.KV_{layout.prekey_bucket}",
        f"$JS.API.DIRECT.GET.{directory}.>",
        f"$JS.API.STREAM.MSG.GET.{directory}",
        layout.service_stream,
        layout.service_presence,
        # the connection's own user (its expiry, to renew in time), and whether a service is
        # there to renew it
        "$SYS.REQ.USER.INFO",
        layout.service_ping,
    ]


def reader_permissions(layout: NatsLayout) -> Permissions:
    return Permissions(publish=tuple(_reading(layout)), subscribe=(f"{READER_REPLY_PREFIX}.>",))


def agent_permissions(layout: NatsLayout, agent_id: str, fingerprint: str | None) -> Permissions:
    """``fingerprint``: of the identity key the connection proved to the service, whose writes
    then go through the service on subjects naming that key; None for a static user (no
    service runs): it writes its own directory and prekey keys itself."""
    token, stream, consumer = token_of(agent_id), layout.stream, layout.consumer(agent_id)
    prekeys = f"KV_{layout.prekey_bucket}"
    publish = [
        *_reading(layout),
        f"{layout.prefix}.inbox.*.{token}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
        f"$JS.API.DIRECT.GET.{prekeys}.>",
        f"$JS.API.STREAM.MSG.GET.{prekeys}",
        layout.claim_subject(agent_id),
    ]
    if fingerprint is None:
        publish += [
            f"$KV.{layout.directory_bucket}.{layout.directory_key(agent_id)}",
            f"$KV.{layout.prekey_bucket}.{layout.prekey_key(agent_id)}",
        ]
    else:
        publish += [layout.write_subject(kind, agent_id, fingerprint) for kind in WRITE_KINDS]
    return Permissions(publish=tuple(publish), subscribe=(f"{layout.reply_prefix(agent_id)}.>",))
