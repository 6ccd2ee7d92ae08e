"""The event loop choice: uvloop by default where installed, the standard loop on request, and
the whole network path (hub process, agents in another process) working on either."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hubutil import HubProcess, subprocess_env

from agentmesh import _eventloop

_AGENTS = textwrap.dedent(
    """
    import sys
    import time
    from agentmesh import Agent, NetworkHub
    from agentmesh._eventloop import loop_name
    from agentmesh.link import NetLoop
    port = int(sys.argv[1])
    got = []
    alice = Agent("alice", hub=NetworkHub("127.0.0.1", port))
    bob = Agent("bob", hub=NetworkHub("127.0.0.1", port))
    bob.on_message(lambda m: got.append(m.payload["i"]))
    for i in range(50):
        alice.send("bob", i=i)
    alice.flush(30)
    deadline = time.monotonic() + 30
    while len(got) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    alice.close(); bob.close()
    print(loop_name(NetLoop.get().loop), got == list(range(50)))
    """
)


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_hub_and_agents_work_on_either_loop(tmp_path: Path, choice: str) -> None:
    if choice == "uvloop":
        pytest.importorskip("uvloop")
    env = subprocess_env()
    env[_eventloop.ENV_VAR] = choice
    hub = HubProcess(tmp_path / "hub.sqlite3", env=env).start()
    try:
        assert f"{choice} loop" in hub.stderr
        out = subprocess.run(
            [sys.executable, "-c", _AGENTS, str(hub.port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split()
    finally:
        code = hub.stop()
    assert out == [choice, "True"]
    assert code == 0, hub.stderr  # a clean stop on SIGTERM


def test_default_is_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(_eventloop.ENV_VAR, raising=False)
    loop = _eventloop.new_event_loop()
    try:
        assert _eventloop.loop_name(loop) == "uvloop"
    finally:
        loop.close()


def test_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_eventloop.ENV_VAR, "asyncio")
    loop = _eventloop.new_event_loop()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert _eventloop.loop_name(loop) == "asyncio"
    finally:
        loop.close()


def test_unknown_choice_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_eventloop.ENV_VAR, "tokio")
    with pytest.raises(ValueError, match="AGENTMESH_EVENT_LOOP must be 'uvloop' or 'asyncio'"):
        _eventloop.new_event_loop()
