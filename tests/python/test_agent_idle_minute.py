"""An idle agent on a network hub stays connected through silences longer than the idle timeout.

With the default limits that is a minute of silence (the hub drops a connection silent for 60 s
and pings one silent for 20 s; the client answers, and pings and gives up on its own side from
the ping interval the hub announces). Every liveness timer on both sides is derived from those
two limits: the hub's housekeeping tick, its pings and idle cut-off, and the client's watchdog,
its pings and its "hub silent" cut-off at three ping intervals. So the test runs the DEFAULT
limits scaled down by SCALE, ratio kept, and waits twice the scaled idle timeout: a few seconds
instead of over a minute, proving the same thing. The fixed floors in those timers stay below
the scaled values (asserted), so they do not change the arithmetic.
"""

from __future__ import annotations

import threading
import time

from hubutil import HubProcess

from agentmesh import Agent
from agentmesh.hub_server import HubLimits
from agentmesh.hubs import NetworkHub

DEFAULTS = HubLimits()
SCALE = 1 / 20
IDLE_TIMEOUT = DEFAULTS.idle_timeout * SCALE
PING_INTERVAL = DEFAULTS.ping_interval * SCALE
IDLE_SECONDS = 2 * IDLE_TIMEOUT


def test_scaled_limits_clear_the_timer_floors():
    # (a change of the defaults could make the scaled run hit them)
    # hub_client: gives up after max(3 * ping_interval, 1.0) s; watchdog every
    # max(0.05, ping_interval / 2) s. agentmesh/hub/core.py: housekeeping tick
    # max(0.05, min(1.0, ping_interval / 4, ...)).
    assert 3 * PING_INTERVAL > 1.0
    assert PING_INTERVAL / 4 > 0.05


def test_idle_agents_stay_connected_past_the_idle_timeout_with_the_default_ratio(tmp_path):
    limits = ["--idle-timeout", repr(IDLE_TIMEOUT), "--ping-interval", repr(PING_INTERVAL)]
    with HubProcess(tmp_path / "hub.sqlite3", extra_args=limits) as hub_proc:
        hub = NetworkHub("127.0.0.1", hub_proc.port)
        alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
        got = threading.Event()
        bob.on_message(lambda msg: got.set())
        alice.send("bob", text="before")
        assert got.wait(30)
        got.clear()
        time.sleep(IDLE_SECONDS)  # the point of the test: nothing is sent for this long
        alice.send("bob", text="after a silence longer than the idle timeout")
        assert got.wait(30), "the idle agent did not receive after the silence"
        # Neither connection was dropped and re-established in between.
        for agent in (alice, bob):
            assert agent._core._transport.backend.reconnects == 0
        assert "idle for more than" not in hub_proc.stderr
        alice.close()
        bob.close()
        hub.close()
