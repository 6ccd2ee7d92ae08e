"""Agents' figures as Prometheus metrics, for the processes that host them.

``status()`` gives a person an agent's state; a platform running many agents wants the same
numbers scraped. :class:`AgentMetrics` is a prometheus-client *collector* over any number of
agents (sync or async), read at each scrape through ``agent.counters()`` (plain numbers, safe
from the scraping thread); :func:`serve_metrics` serves one on its own HTTP port::

    from agentmesh.agent_metrics import AgentMetrics, serve_metrics

    endpoint = serve_metrics([alice, bob], port=9465)      # http://127.0.0.1:9465/metrics
    ...
    endpoint.stop()

    # or into an application's own registry:
    from prometheus_client import REGISTRY
    REGISTRY.register(AgentMetrics([alice, bob]))

Every series has the label ``agent`` (the agent id). ``prometheus-client`` is the optional
``metrics`` extra (``pip install 'agentmesh[metrics]'``), as for the hub's metrics. The figures
are the agent's own counts: nothing about what its messages say.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["PREFIX", "AgentMetrics", "MetricsServer", "serve_metrics"]

#: Every metric's name starts with this.
PREFIX = "agentmesh_agent"

# (counter name in ``counters()``, metric suffix, help, is a counter)
_FIGURES = (
    ("sent", "sent", "Messages sealed and handed to the hub", True),
    ("received", "received", "Messages accepted (authenticated, decrypted)", True),
    ("rejected", "rejected", "Envelopes rejected (tampered, replayed, forged, unknown)", True),
    ("handler_errors", "handler_errors", "Exceptions raised by message handlers", True),
    ("active_sessions", "sessions", "Peers with an established session", False),
    ("known_peers", "known_peers", "Peers whose identity key is pinned", False),
)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "agent metrics need prometheus-client: pip install 'agentmesh[metrics]'"
        ) from exc
    return prometheus_client


class AgentMetrics:
    """A prometheus-client collector over ``agents`` (more may be added while it runs)."""

    def __init__(self, agents: Iterable[Any] = ()) -> None:
        _client()
        self._lock = threading.Lock()
        self._agents: list[Any] = list(agents)

    def add(self, agent: Any) -> None:
        with self._lock:
            self._agents.append(agent)

    def remove(self, agent: Any) -> None:
        with self._lock:
            self._agents = [a for a in self._agents if a is not agent]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            agents = list(self._agents)
        readings = [(agent.agent_id, agent.counters(), agent.closed) for agent in agents]
        for key, suffix, what, is_counter in _FIGURES:
            kind = CounterMetricFamily if is_counter else GaugeMetricFamily
            family = kind(f"{PREFIX}_{suffix}", what, labels=["agent"])
            for agent_id, counters, _closed in readings:
                family.add_metric([agent_id], counters[key])
            yield family
        open_family = GaugeMetricFamily(
            f"{PREFIX}_open", "1 while the agent is open", labels=["agent"]
        )
        for agent_id, _counters, closed in readings:
            open_family.add_metric([agent_id], 0 if closed else 1)
        yield open_family


class MetricsServer:
    """An HTTP endpoint serving one :class:`AgentMetrics` (prometheus-client's own server)."""

    def __init__(self, metrics: AgentMetrics, host: str, port: int) -> None:
        client = _client()
        registry = client.CollectorRegistry()
        registry.register(metrics)
        self.metrics = metrics
        self._server, self._thread = client.start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_metrics(agents: Iterable[Any], port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of ``agents`` on ``http://host:port/metrics`` (``port=0``: a free one,
    read from ``.port``) until ``.stop()``. 127.0.0.1 unless told otherwise: the counts show
    who an agent talks to how much."""
    return MetricsServer(AgentMetrics(agents), host, port)
