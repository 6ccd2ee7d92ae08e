"""One message size limit on every hub, checked when sending, before anything leaves: code
tried on a LocalHub behaves the same on the network."""

from __future__ import annotations

import time

import pytest

from agentmesh import Agent, MessageTooLargeError
from agentmesh.agent_rules import MAX_ENVELOPE_BYTES


@pytest.fixture
def hub(every_hub):
    return every_hub


def test_a_message_over_the_limit_is_refused_on_every_hub_and_nothing_is_sent(hub) -> None:
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    got: list[int] = []
    bob.on_message(lambda msg: got.append(len(msg.text)))
    try:
        with pytest.raises(MessageTooLargeError, match=r"over the limit of 4,194,304 bytes") as e:
            alice.send("bob", text="x" * (MAX_ENVELOPE_BYTES + 1))
        assert isinstance(e.value, ValueError) and "'bob'" in str(e.value)
        with pytest.raises(MessageTooLargeError):
            alice.request("bob", text="y" * MAX_ENVELOPE_BYTES, timeout=5)
        alice.send("bob", text="z" * (MAX_ENVELOPE_BYTES - 4096))  # just under: it goes
        alice.flush(30)
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [MAX_ENVELOPE_BYTES - 4096]  # only that one arrived
    finally:
        alice.close()
        bob.close()
