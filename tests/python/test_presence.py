"""Presence: ``hub.is_online(id)`` and ``agent.wait_for_peer(id, timeout)`` on every hub, so a
coordinator waits for its workers instead of polling."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agentmesh import Agent, AsyncAgent


@pytest.fixture
def hub(every_hub):
    return every_hub


def test_online_is_registered_and_connected_now(hub) -> None:
    coordinator = Agent("coordinator", hub=hub)
    assert not hub.is_online("worker")
    worker = Agent("worker", hub=hub)
    assert hub.is_online("worker")
    worker.close()
    deadline = time.monotonic() + 10
    while hub.is_online("worker") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not hub.is_online("worker")
    coordinator.close()


def test_a_coordinator_waits_for_a_worker_that_comes_later(hub) -> None:
    coordinator = Agent("coordinator", hub=hub)
    made: list[Agent] = []
    later = threading.Timer(0.3, lambda: made.append(Agent("worker", hub=hub)))
    later.start()
    try:
        started = time.monotonic()
        coordinator.wait_for_peer("worker", timeout=10)
        assert 0.2 < time.monotonic() - started < 10
        with pytest.raises(TimeoutError, match=r"'nobody' did not come online within 0\.2 s"):
            coordinator.wait_for_peer("nobody", timeout=0.2)
    finally:
        later.join()
        for agent in (*made, coordinator):
            agent.close()


def test_async_agents_wait_too(hub) -> None:
    async def main() -> None:
        coordinator = AsyncAgent("coordinator", hub=hub)
        worker = AsyncAgent("worker", hub=hub)
        await coordinator.wait_for_peer("worker", timeout=5)
        await worker.close()
        await coordinator.close()

    asyncio.run(main())


def test_waiting_needs_a_hub() -> None:
    with pytest.raises(RuntimeError, match="No hub configured"):
        Agent("alone").wait_for_peer("anyone", timeout=0.1)
