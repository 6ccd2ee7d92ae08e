"""Creating the inbox stream and the KV buckets, and checking the settings that keep
acknowledged data, as far as a client can see them (docs/nats.md, "Settings").

What a client can check: the server's version and ``max_payload`` (in its INFO), whether it
is part of a cluster, and the stream's and buckets' replicas, storage and limits. What it
cannot: ``sync_interval`` (not in INFO; the launcher, ``agentmesh nats-dev`` and the example
configs in docs/nats.md write ``always``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import HubError
from .nats_layout import (
    DEFAULT_MAX_QUEUED,
    DUPLICATE_WINDOW,
    FETCH_BATCH,
    MAX_ENVELOPE,
    MIN_SERVER_VERSION,
    NatsLayout,
)

__all__ = ["NatsSettings", "check_server", "ensure_layout", "server_version"]

log = logging.getLogger("agentmesh.nats")

#: Headers and subject beside the envelope in one message.
_MESSAGE_OVERHEAD = 2048


@dataclass(frozen=True)
class NatsSettings:
    """What a deployment is created with. ``replicas=None``: 3 on a cluster, 1 on a lone
    server. ``max_queued_per_agent``: envelopes queued for one recipient before sends to it
    are refused ("inbox full"). ``allow_unsafe``: accept R1 on a cluster, or an old server
    (tests of the checks only)."""

    layout: NatsLayout = field(default_factory=NatsLayout)
    replicas: int | None = None
    max_queued_per_agent: int = DEFAULT_MAX_QUEUED
    allow_unsafe: bool = False

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas not in (1, 3, 5):
            raise ValueError(f"replicas must be 1, 3 or 5, not {self.replicas!r}")
        if not isinstance(self.max_queued_per_agent, int) or self.max_queued_per_agent < 1:
            raise ValueError(
                f"max_queued_per_agent must be a positive int, not {self.max_queued_per_agent!r}"
            )


def server_version(info: dict[str, Any]) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", str(info.get("version", "")))
    if match is None:
        return (0, 0, 0)
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


def check_server(nc: Any, settings: NatsSettings, guarded: bool = False) -> int:
    """Checks what the connected server tells about itself; returns the replica count to use.
    HubError naming the setting when one would lose acknowledged data or refuse envelopes, or
    when ``guarded`` (``NatsHub(auth=True)``) and the server lets anyone in."""
    info: dict[str, Any] = dict(getattr(nc, "_server_info", None) or {})
    where = f"the NATS server {info.get('server_name') or nc.connected_url}"
    if guarded and not (info.get("auth_required") and info.get("nonce")):
        raise HubError(
            f"{where} lets clients in without authorization (or sends no nonce), so no "
            "authorization service guards it: configure it (agentmesh nats-auth, docs/nats.md) "
            "or connect without auth=True"
        )
    version = server_version(info)
    if version < MIN_SERVER_VERSION and not settings.allow_unsafe:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        raise HubError(
            f"{where} runs nats-server {info.get('version')}; agentmesh needs {wanted} or newer"
        )
    if not info.get("jetstream"):
        raise HubError(f"{where} has JetStream disabled: enable it (jetstream {{ ... }})")
    max_payload = int(info.get("max_payload") or 0)
    if max_payload < MAX_ENVELOPE + _MESSAGE_OVERHEAD:
        raise HubError(
            f"{where} has max_payload {max_payload} bytes; the largest envelope needs "
            f"{MAX_ENVELOPE + _MESSAGE_OVERHEAD}: set max_payload: 8MB on every server"
        )
    clustered = bool(info.get("cluster"))
    replicas = settings.replicas or (3 if clustered else 1)
    if clustered and replicas < 3 and not settings.allow_unsafe:
        raise HubError(
            f"{where} is part of a cluster, and {replicas} replica(s) would lose acknowledged "
            "envelopes with one node: use 3"
        )
    return replicas


async def ensure_layout(
    js: Any,
    settings: NatsSettings,
    replicas: int,
    read_stream: Callable[[], Awaitable[Any]] | None = None,
) -> Any:
    """Creates the inbox stream and both buckets if missing (creating them twice with the
    same settings is harmless), then checks the ones found; returns the stream's info.
    ``read_stream``: how to read the stream's info where a client may not (through the
    authorization service, which has made it)."""
    from nats.js import api
    from nats.js.errors import BucketNotFoundError, NotFoundError

    layout = settings.layout
    stream_config = api.StreamConfig(
        name=layout.stream,
        subjects=[layout.inbox_subjects],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        # a full inbox refuses the new envelope (never drops an old one), per recipient
        discard=api.DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=settings.max_queued_per_agent,
        max_msg_size=MAX_ENVELOPE,
        duplicate_window=DUPLICATE_WINDOW,
        deny_delete=True,
        deny_purge=True,
    )
    try:
        info = await (read_stream() if read_stream is not None else js.stream_info(layout.stream))
    except NotFoundError:
        info = await js.add_stream(stream_config)
        log.info("created stream %s with %d replica(s)", layout.stream, replicas)
    _check_stream(info, replicas, settings)
    for bucket in (layout.directory_bucket, layout.prekey_bucket):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    replicas=replicas,
                    storage=api.StorageType.FILE,
                    max_value_size=256 * 1024,
                )
            )
            log.info("created bucket %s with %d replica(s)", bucket, replicas)
        bucket_info = await js.stream_info(f"KV_{bucket}")
        _check_replicas(f"bucket {bucket}", bucket_info.config.num_replicas, replicas, settings)
        await _forbid_rollups(js, bucket_info.config)
    return info


async def _forbid_rollups(js: Any, config: Any) -> None:
    """A KV bucket takes ``Nats-Rollup`` headers by default: one publish to a key the writer
    may write (an agent's own directory entry) would then purge every other key of the bucket
    (every other agent's binding and prekeys). agentmesh never rolls up or purges its buckets,
    so both are switched off, on buckets made earlier too."""
    if config.allow_rollup_hdrs or not config.deny_purge:
        config.allow_rollup_hdrs = False
        config.deny_purge = True
        await js.update_stream(config)
        log.info("bucket stream %s: rollups and purges switched off", config.name)


def _check_stream(info: Any, replicas: int, settings: NatsSettings) -> None:
    from nats.js import api

    config = info.config
    name = f"stream {config.name}"
    _check_replicas(name, config.num_replicas, replicas, settings)
    if config.retention != api.RetentionPolicy.WORK_QUEUE:
        raise HubError(
            f"{name} exists with {config.retention} retention; agentmesh needs a work queue"
        )
    if config.storage != api.StorageType.FILE:
        raise HubError(
            f"{name} keeps its messages in {config.storage}; agentmesh needs file storage"
        )
    if list(config.subjects or []) != [settings.layout.inbox_subjects]:
        raise HubError(
            f"{name} holds the subjects {config.subjects}, not {settings.layout.inbox_subjects!r} "
            "(an inbox subject names recipient and sender since the authorization service): "
            "recreate it, or use another prefix"
        )
    if (config.duplicate_window or 0) < DUPLICATE_WINDOW / 2:
        raise HubError(
            f"{name} drops duplicate sends for {config.duplicate_window}s only; resends after a "
            f"failover need {DUPLICATE_WINDOW:g}s"
        )
    if config.discard != api.DiscardPolicy.NEW or not config.discard_new_per_subject:
        raise HubError(
            f"{name} does not refuse new envelopes for a full inbox (discard new per subject)"
        )


def _check_replicas(what: str, found: int | None, wanted: int, settings: NatsSettings) -> None:
    if (found or 1) < wanted and not settings.allow_unsafe:
        raise HubError(
            f"{what} has {found or 1} replica(s), fewer than the {wanted} this deployment needs: "
            "acknowledged data would die with one node; recreate it (docs/nats.md)"
        )


def consumer_config(layout: NatsLayout, agent_id: str) -> Any:
    from nats.js import api

    from .nats_layout import ACK_WAIT

    return api.ConsumerConfig(
        # (the name too: nats-py then puts the filter in the request's subject, where a
        # static user's permissions can pin it; the server checks the two agree)
        name=layout.consumer(agent_id),
        durable_name=layout.consumer(agent_id),
        filter_subject=layout.inbox_filter(agent_id),
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
        # equal to the fetch batch: newer ones wait while a batch is unacknowledged (and a
        # delivery lost on its way is caught by the receiver's verification, nats_receiver)
        max_ack_pending=FETCH_BATCH,
        max_waiting=16,
    )
