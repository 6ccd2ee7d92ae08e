"""The hub's Prometheus metrics, scraped over HTTP from a real hub process, and the same
figures for a person (``agentmesh hub-stats``)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agentmesh import Agent
from agentmesh.testing import HubProcess

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

METRICS_LINE = re.compile(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_follow_the_traffic_and_hub_stats_prints_them(tmp_path: Path) -> None:
    hub = HubProcess(
        tmp_path / "hub.sqlite3", extra_args=("--metrics-port", "0"), log_level="info"
    ).start()
    try:
        deadline = time.monotonic() + 10
        while not (found := METRICS_LINE.search(hub.stderr)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert found, hub.stderr
        url = found.group(1)
        address = f"127.0.0.1:{hub.port}"
        bob = Agent("bob", hub=address)
        got: list[str] = []
        bob.on_message(lambda msg: got.append(msg.text))
        with Agent("alice", hub=address) as alice:
            for i in range(5):
                alice.send("bob", text=f"m{i}")
            alice.flush(10)
            deadline = time.monotonic() + 10
            while len(got) < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            with pytest.raises(Exception, match="not found"):
                alice.send("nobody", text="?")
            bob.close()  # offline: what comes now queues
            for i in range(3):
                alice.send("bob", text=f"queued {i}")
            alice.flush(10)
            time.sleep(0.3)  # (the queue's age is measured from the store's commit, in ms)
            values = scrape(url)
            assert values["agentmesh_hub_agents_registered"] == 2
            assert values["agentmesh_hub_agents_online"] == 1
            assert values["agentmesh_hub_accepted_total"] == 8
            assert values["agentmesh_hub_queued_envelopes"] == 3
            assert values['agentmesh_hub_agent_queued_envelopes{agent="bob"}'] == 3
            assert values["agentmesh_hub_store_commits_total"] >= 1
            assert values["agentmesh_hub_delivered_total"] == 5
            age = values['agentmesh_hub_agent_queue_age_seconds{agent="bob"}']
            assert 0.2 <= age < 30
            assert values["agentmesh_hub_queue_oldest_age_seconds"] == age
            stats = subprocess.run(
                [sys.executable, "-m", "agentmesh.cli", "hub-stats", "--url", url],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert stats.returncode == 0, stats.stderr
        assert re.search(r"agents online\s+1\b", stats.stdout)
        assert re.search(r"accepted\s+8\b", stats.stdout)
        assert re.search(r"bob\s+3\s+[\d.]+ s", stats.stdout)
    finally:
        hub.stop()


def test_hub_stats_says_what_is_wrong_with_its_url() -> None:
    run = [sys.executable, "-m", "agentmesh.cli", "hub-stats"]
    bad = subprocess.run([*run, "--url", "ftp://x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an http(s) URL" in bad.stderr
    gone = subprocess.run(
        [*run, "--url", "http://127.0.0.1:9/metrics", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1 and "cannot read the metrics" in gone.stderr
