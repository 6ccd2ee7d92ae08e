"""The hub's metrics for Prometheus, served over HTTP when asked (``--metrics-port``), read from
the running hub at each scrape: connections, registered and online agents, queued envelopes
(in all and per agent, with the age of each agent's oldest), accepted, delivered and refused
envelopes and their bytes, and the store's commits and the time they took.

``prometheus-client`` is an optional extra (``pip install 'agentmesh[metrics]'``); without it a
hub asked for metrics refuses to start, saying so. Nothing here looks inside an envelope: the
figures are the metadata the hub routes by anyway. The endpoint listens on 127.0.0.1 unless
told otherwise; who can reach it can see who has how much mail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentmesh.hub.core import HubCore

__all__ = ["MAX_AGENT_SERIES", "PREFIX", "MetricsEndpoint", "collect"]

log = logging.getLogger("agentmesh.hub")

#: Every metric's name starts with this.
PREFIX = "agentmesh_hub"
#: Per-agent queue series, at most (the longest queues): a big directory must not make every
#: scrape huge.
MAX_AGENT_SERIES = 1000
#: Seconds a scrape waits for the store's queue ages before leaving them out.
AGE_READ_TIMEOUT = 2.0


def _require_client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the hub's metrics need prometheus-client: pip install 'agentmesh[metrics]'"
        ) from exc
    return prometheus_client


def collect(hub: HubCore) -> Iterator[Any]:
    """The metric families of ``hub`` now (called on the scraping thread: it only reads)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    agents = list(hub.agents.items())  # (one C-level copy: safe beside the event loop)
    stats = hub.stats
    yield GaugeMetricFamily(f"{PREFIX}_connections", "Open connections", value=len(hub.connections))
    yield GaugeMetricFamily(
        f"{PREFIX}_agents_registered", "Agent ids bound on this hub", value=len(agents)
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_agents_online",
        "Registered agents connected now",
        value=sum(1 for _, ast in agents if ast.conn is not None),
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_queued_envelopes",
        "Envelopes stored and not yet acknowledged, all agents",
        value=sum(ast.count for _, ast in agents),
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_queued_bytes",
        "Bytes of the envelopes stored and not yet acknowledged",
        value=sum(ast.bytes for _, ast in agents),
    )
    per_agent = GaugeMetricFamily(
        f"{PREFIX}_agent_queued_envelopes",
        f"Envelopes queued per agent (the {MAX_AGENT_SERIES} longest queues)",
        labels=["agent"],
    )
    busiest = sorted((a for a in agents if a[1].count), key=lambda a: -a[1].count)
    busiest = busiest[:MAX_AGENT_SERIES]
    for agent_id, ast in busiest:
        per_agent.add_metric([agent_id], ast.count)
    yield per_agent
    yield from _queue_ages(hub, [agent_id for agent_id, _ in busiest])
    for name, value, what in (
        ("accepted", stats.accepted, "Envelopes accepted (committed to the store)"),
        ("accepted_bytes", stats.accepted_bytes, "Bytes of the envelopes accepted"),
        ("delivered", stats.delivered, "Deliveries acknowledged by their recipients"),
        ("delivered_bytes", stats.delivered_bytes, "Bytes of the deliveries acknowledged"),
    ):
        yield CounterMetricFamily(f"{PREFIX}_{name}", what, value=value)
    refused = CounterMetricFamily(
        f"{PREFIX}_refused", "Envelopes refused, by reason", labels=["reason"]
    )
    for reason, count in sorted(dict(stats.refused).items()):
        refused.add_metric([reason], count)
    yield refused
    commits, seconds = hub.store.commit_stats()
    yield CounterMetricFamily(f"{PREFIX}_store_commits", "Store commits (group commits)", commits)
    yield CounterMetricFamily(
        f"{PREFIX}_store_commit_seconds", "Time the store's commits took, in all", seconds
    )


def _queue_ages(hub: HubCore, recipients: list[str]) -> Iterator[Any]:
    """How long the oldest queued envelope of each of ``recipients`` has waited (read from the
    store on the hub's event loop; left out if the hub does not answer in time)."""
    from prometheus_client.core import GaugeMetricFamily

    per_agent = GaugeMetricFamily(
        f"{PREFIX}_agent_queue_age_seconds",
        f"Age of the oldest queued envelope per agent (the {MAX_AGENT_SERIES} longest queues)",
        labels=["agent"],
    )
    oldest = GaugeMetricFamily(
        f"{PREFIX}_queue_oldest_age_seconds",
        "Age of the oldest queued envelope of the longest queues (0 when none waits)",
    )
    ages: dict[str, int] = {}
    if recipients:
        try:
            ages = asyncio.run_coroutine_threadsafe(
                hub.store.oldest_enqueued(recipients), hub.loop
            ).result(AGE_READ_TIMEOUT)
        except Exception as exc:  # a busy or stopping hub: the other metrics still go out
            log.debug("metrics: queue ages not read: %r", exc)
    now_ms = time.time() * 1000
    for agent_id in recipients:
        if agent_id in ages:
            per_agent.add_metric([agent_id], max(0.0, (now_ms - ages[agent_id]) / 1000))
    oldest.add_metric([], max(0.0, (now_ms - min(ages.values())) / 1000) if ages else 0.0)
    yield per_agent
    yield oldest


class MetricsEndpoint:
    """The HTTP server of the metrics (a thread of prometheus-client's)."""

    def __init__(self, hub: HubCore, host: str, port: int) -> None:
        client = _require_client()

        class _Collector:
            def collect(self) -> Iterator[Any]:
                return collect(hub)

        registry = client.CollectorRegistry()
        registry.register(_Collector())
        self._server, self._thread = client.start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
