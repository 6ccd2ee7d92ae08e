"""``run_forever()``: a sync agent that only answers serves until it is closed, a timeout
passes, Ctrl-C or SIGTERM; then it closes itself."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from agentmesh import Agent, AsyncAgent, LocalHub
from agentmesh.testing import HubProcess


def test_serves_until_a_handler_closes_it() -> None:
    hub = LocalHub()
    server, client = Agent("server", hub=hub), Agent("client", hub=hub)

    @server.on_message
    def answer(msg) -> None:
        if msg.text == "stop":
            server.close()
        else:
            msg.reply(text="ok")

    thread = threading.Thread(target=server.run_forever)
    thread.start()
    assert client.request("server", text="hi", timeout=5).text == "ok"
    client.send("server", text="stop")
    thread.join(5)
    assert not thread.is_alive() and server.closed


def test_returns_after_its_timeout_and_closes() -> None:
    agent = Agent("a", hub=LocalHub())
    started = time.monotonic()
    agent.run_forever(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 5 and agent.closed


def test_async_agents_serve_too() -> None:
    async def main() -> None:
        agent = AsyncAgent("a", hub=LocalHub())
        await agent.run_forever(timeout=0.2)
        assert agent.closed

    asyncio.run(main())


SERVER = textwrap.dedent(
    """
    import sys
    from agentmesh import Agent
    agent = Agent("server", hub=sys.argv[1], keypair_path=sys.argv[2])
    agent.on_message(lambda msg: msg.reply(text="served"))
    print("serving", flush=True)
    agent.run_forever()
    print("closed" if agent.closed else "still open", flush=True)
    """
)


def test_sigterm_closes_a_serving_process_cleanly(tmp_path: Path) -> None:
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as hub:
        address = f"127.0.0.1:{hub.port}"
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, address, str(tmp_path / "server.key")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
            with Agent("client", hub=address) as client:
                assert client.request("server", text="?", timeout=10).text == "served"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert out == "closed\n"
        finally:
            if proc.poll() is None:
                proc.kill()
