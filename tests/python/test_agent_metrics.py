"""Agents' counters as Prometheus metrics, scraped over HTTP with a real client, and the same
collector registered into an application's own registry."""

from __future__ import annotations

import urllib.request

import pytest

from agentmesh import Agent, LocalHub

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

from prometheus_client import CollectorRegistry, generate_latest

from agentmesh.agent_metrics import AgentMetrics, serve_metrics


def parse(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_agent_counters_are_served_over_http():
    hub = LocalHub()
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    bob.on_message(lambda msg: None)
    for i in range(3):
        alice.send("bob", text=f"m{i}")
    bob.receive(b"\x00not an envelope")  # (rejected: counted)
    with serve_metrics([alice, bob]) as endpoint:
        assert endpoint.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            values = parse(response.read().decode())
        assert values['agentmesh_agent_sent_total{agent="alice"}'] == 3
        assert values['agentmesh_agent_received_total{agent="bob"}'] == 3
        assert values['agentmesh_agent_rejected_total{agent="bob"}'] == 1
        assert values['agentmesh_agent_sessions{agent="alice"}'] == 1
        assert values['agentmesh_agent_known_peers{agent="bob"}'] == 1
        assert values['agentmesh_agent_open{agent="alice"}'] == 1
        alice.close()
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            values = parse(response.read().decode())
        assert values['agentmesh_agent_open{agent="alice"}'] == 0
    bob.close()


def test_the_collector_goes_into_an_applications_registry_and_follows_added_agents():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    metrics = AgentMetrics([alice])
    registry = CollectorRegistry()
    registry.register(metrics)
    bob = Agent("bob", hub=hub)
    metrics.add(bob)
    alice.send("bob", text="hi")
    values = parse(generate_latest(registry).decode())
    assert values['agentmesh_agent_sent_total{agent="alice"}'] == 1
    assert values['agentmesh_agent_received_total{agent="bob"}'] == 1
    metrics.remove(bob)
    assert 'agent="bob"' not in generate_latest(registry).decode()


def test_counters_match_status():
    hub = LocalHub()
    alice, _bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    alice.send("bob", text="hi")
    status, counters = alice.status(), alice.counters()
    for key in ("sent", "received", "rejected", "handler_errors"):
        assert counters[key] == status[key]
    assert counters["active_sessions"] == len(status["active_sessions"])
    assert counters["known_peers"] == len(status["known_peers"])
