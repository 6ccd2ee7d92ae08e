"""A message whose handlers are running when the agent shuts down is handled exactly once: a
handler the shutdown cancels (an ``async def`` handler when ``asyncio.run`` ends) leaves it
unacknowledged for the next start, and a handler that outlives ``close``'s usual wait is
waited for, so that its message is acknowledged and its session kept past it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hubutil import HubProcess

from agentmesh import Agent, NetworkHub
from agentmesh.testing import subprocess_env


@pytest.fixture
def hub(tmp_path: Path):
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        yield proc


def _send(hub: HubProcess, tmp_path: Path, *texts: str) -> None:
    with Agent("alice", hub=NetworkHub(hub.address), keypair_path=tmp_path / "alice.key") as a:
        for text in texts:
            a.send("bob", text)
        a.flush(10)


def _received_on_restart(hub: HubProcess, tmp_path: Path, until: str) -> list[str]:
    """Bob's texts after a restart, up to and including ``until``."""
    got: list[str] = []
    done = threading.Event()
    with Agent("bob", hub=NetworkHub(hub.address), keypair_path=tmp_path / "bob.key") as bob:

        @bob.on_message
        def handle(msg):
            got.append(msg.text)
            if msg.text == until:
                done.set()

        assert done.wait(20), got
    return got


_FIRST_RUN = """
import asyncio, sys
from agentmesh import AsyncAgent, NetworkHub

async def main():
    bob = AsyncAgent("bob", hub=NetworkHub(sys.argv[1]), keypair_path=sys.argv[2])
    running = asyncio.Event()

    @bob.on_message
    async def slow(msg):
        running.set()
        await asyncio.sleep(60)
        print("finished", msg.text, flush=True)

    print("ready", flush=True)
    await asyncio.wait_for(running.wait(), 30)
    print("running", flush=True)
    # the program ends here, the agent never closed: asyncio.run cancels the handler

asyncio.run(main())
"""


def test_an_async_handler_cancelled_at_shutdown_gets_its_message_again(hub, tmp_path):
    first = subprocess.Popen(
        [sys.executable, "-c", _FIRST_RUN, hub.address, str(tmp_path / "bob.key")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "ready"
    _send(hub, tmp_path, "hello")
    out, err = first.communicate(timeout=60)
    assert out.split() == ["running"], err
    _send(hub, tmp_path, "after")
    assert _received_on_restart(hub, tmp_path, "after") == ["hello", "after"]


def test_close_waits_for_a_handler_that_runs_past_half_a_minute(hub, tmp_path):
    release = threading.Event()
    handled: list[str] = []
    bob = Agent("bob", hub=NetworkHub(hub.address), keypair_path=tmp_path / "bob.key")

    @bob.on_message
    def slow(msg):
        handled.append(msg.text)
        release.wait(60)

    _send(hub, tmp_path, "hello")
    deadline = time.monotonic() + 20
    while not handled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handled == ["hello"]
    threading.Timer(31, release.set).start()
    started = time.monotonic()
    bob.close(timeout=2)
    assert time.monotonic() - started >= 30  # (the handler was still running at 30 s)
    _send(hub, tmp_path, "after")
    assert _received_on_restart(hub, tmp_path, "after") == ["after"]
