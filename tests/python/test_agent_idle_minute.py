"""An idle agent on a network hub with the DEFAULT limits is still alive a minute later.

The hub's idle timeout is 60 s by default and the client answers its pings (every 20 s): after
65 s of silence both agents must still be connected and talk without reconnecting.
"""

from __future__ import annotations

import threading
import time

from hubutil import HubProcess

from agentmesh import Agent
from agentmesh.hubs import NetworkHub

IDLE_SECONDS = 65.0


def test_idle_agents_are_alive_after_a_minute_with_default_limits(tmp_path):
    with HubProcess(tmp_path / "hub.sqlite3") as hub_proc:
        hub = NetworkHub("127.0.0.1", hub_proc.port)
        alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
        got = threading.Event()
        bob.on_message(lambda msg: got.set())
        alice.send("bob", text="before")
        assert got.wait(30)
        got.clear()
        time.sleep(IDLE_SECONDS)  # the point of the test: nothing happens for over a minute
        alice.send("bob", text="after a minute of silence")
        assert got.wait(30), "the idle agent did not receive after a minute"
        # Neither connection was dropped and re-established in between.
        for agent in (alice, bob):
            assert agent._core._transport.client.reconnects == 0
        alice.close()
        bob.close()
        hub.close()
