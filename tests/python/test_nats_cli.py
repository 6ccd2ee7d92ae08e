"""``agentmesh nats-dev`` through a real process: it starts a cluster guarded by two
authorization services, says how to connect, agents talk through it (a connection without a
proof is refused), and Ctrl-C stops every node and service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from natsutil import wait_until

from agentmesh import Agent, NatsHub
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import NatsAuthError
from agentmesh.testing import subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def connect_as_mallory(urls: list[str]) -> None:
    """A connection claiming to be an agent with no valid proof."""
    from agentmesh.nats_connection import connect

    bundle = json.dumps(AgentKeyPair.generate("mallory").public_bundle())
    options = {"token": bundle, "signature_cb": lambda nonce: b"AAAA"}
    nc = await connect(urls, connect_timeout=5.0, name="mallory", options=options)
    await nc.close()


async def connect_new_agents(urls: list[str], count: int) -> int:
    """How many of ``count`` agents with new ids, connecting together, get in."""
    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_connection import connect
    from agentmesh.nats_layout import NatsLayout

    async def one(i: int) -> bool:
        keypair = AgentKeyPair.generate(f"dev-agent-{i}")
        options = agent_options(NatsLayout(), keypair)
        try:
            nc = await connect(
                urls, connect_timeout=20.0, name=f"dev-{i}", options=options, guarded=True
            )
        except NatsAuthError:
            return False
        await nc.close()
        return True

    # (ten at a time: each binds an id and makes a replicated consumer, and a server drops a
    # connection whose callout is not answered within 5 s, which a busy machine can miss)
    got = 0
    for first in range(0, count, 10):
        got += sum(await asyncio.gather(*(one(i) for i in range(first, min(first + 10, count)))))
    return got


def start_nats_dev(tmp_path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``agentmesh nats-dev ARGS`` started; (its process, what it printed until it is up)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli", "nats-dev", *args, "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any("Ctrl-C" in line for line in lines):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(proc.stderr.read() if proc.stderr else "nats-dev did not start")
        lines.append(proc.stdout.readline() if proc.stdout else "")
    return proc, "".join(lines)


def talk_through(hub: NatsHub) -> None:
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    got: list = []
    bob.on_message(got.append)
    alice.send("bob", text="through nats-dev")
    wait_until(lambda: got, what="the message")
    assert got[0].text == "through nats-dev"
    alice.close(), bob.close()
    hub.close()


def stop_with_ctrl_c(proc: subprocess.Popen[str], pids: list[int]) -> None:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert all(gone(pid) for pid in pids)


def test_nats_dev_runs_a_cluster_and_stops_it_on_ctrl_c(tmp_path):
    proc, text = start_nats_dev(tmp_path, "--nodes", "3")
    try:
        urls = re.findall(r"nats://127\.0\.0\.1:\d+", re.search(r"NatsHub\((.*)\)", text)[1])
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(urls) == 3 and len(pids) == 5  # three servers, two authorization services
        assert "auth=True" in text
        config = (tmp_path / "n1.conf").read_text()
        assert "sync_interval: always" in config and "auth_callout" in config

        with pytest.raises(NatsAuthError):  # safe by default: an agent without a proof
            asyncio.run(connect_as_mallory(urls))
        talk_through(NatsHub(urls, auth=True))
        # a local cluster's agents all come from one address: more than the production
        # budget of new ids a minute (60 per address, each of the two services) get in
        assert asyncio.run(connect_new_agents(urls, 130)) == 130
        stop_with_ctrl_c(proc, pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nats_dev_without_auth_trusts_every_client_and_says_so(tmp_path):
    proc, text = start_nats_dev(tmp_path, "--nodes", "1", "--no-auth")
    try:
        urls = re.findall(r"nats://127\.0\.0\.1:\d+", re.search(r"NatsHub\((.*)\)", text)[1])
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(urls) == 1 and len(pids) == 1  # one server, no authorization service
        assert "auth=True" not in text and "every client of the cluster is trusted" in text
        assert "auth_callout" not in (tmp_path / "n1.conf").read_text()
        asyncio.run(connect_as_mallory(urls))  # (trusting: any client gets in)
        talk_through(NatsHub(urls))
        stop_with_ctrl_c(proc, pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nats_dev_refuses_an_even_cluster(capsys):
    from agentmesh.cli import main

    assert main(["nats-dev", "--nodes", "2"]) == 2
    assert "--nodes must be 1, 3 or 5" in capsys.readouterr().err


def test_the_launcher_docstring_example_runs():
    import textwrap

    import agentmesh.nats_cluster

    doc = agentmesh.nats_cluster.__doc__ or ""
    example = textwrap.dedent(doc.split("::\n\n", 1)[1].split("\nEvery node")[0])
    assert "NatsCluster(" in example
    exec(compile(example, "nats_cluster docstring", "exec"), {"__name__": "example"})
