"""Agents on NatsHub, on a real three-node NATS cluster on 127.0.0.1: across processes, in
order, offline delivery and restart continuity, an impostor refused, a swapped key detected.
``Agent`` is the same as on every other hub; only the hub passed changes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from natsutil import fresh_prefix, raw_kv_put, wait_until

from agentmesh import Agent, HubError, NatsHub
from agentmesh.errors import IdentityChangedError
from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_layout import NatsLayout
from agentmesh.testing import subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats"), nodes=3) as running:
        yield running


@pytest.fixture
def hub(cluster):
    net = NatsHub(cluster.urls, prefix=fresh_prefix(), timeout=20.0)
    yield net
    net.close()


ECHO_AGENT = textwrap.dedent(
    """
    import json, sys, threading
    from agentmesh import Agent, NatsHub

    servers, prefix, key, agent_id, count = sys.argv[1:6]
    count = int(count)
    done = threading.Event()
    seen = []
    hub = NatsHub(servers.split(","), prefix=prefix)
    agent = Agent(agent_id, hub=hub, keypair_path=key)

    @agent.on_error
    def rejected(exc):
        print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}), flush=True)

    @agent.on_message
    def echo(msg):
        agent.send(msg.sender, text="ack:" + msg.text)
        seen.append(msg.text)
        print(json.dumps({"text": msg.text, "prekey": bool(msg.envelope.is_prekey)}), flush=True)
        if len(seen) >= count:
            done.set()

    print(json.dumps({"ready": agent.fingerprint}), flush=True)
    ok = done.wait(60)
    agent.flush(30)
    print(json.dumps({"status": agent.status()}), flush=True)
    agent.close()
    hub.close()
    sys.exit(0 if ok else 1)
    """
)


def run_echo(tmp_path: Path, hub: NatsHub, key: Path, agent_id: str, count: int):
    script = tmp_path / "echo_agent.py"
    script.write_text(ECHO_AGENT)
    prefix = hub.settings.layout.prefix
    args = [",".join(hub.servers), prefix, str(key), agent_id, str(count)]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


def lines_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_across_processes_in_order_offline_and_after_a_restart(tmp_path, hub):
    bob_key = tmp_path / "bob.key"
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    acks: list = []
    alice.on_message(acks.append)

    # 1. bob online in another process: a round trip sets up the sessions both ways
    bob = run_echo(tmp_path, hub, bob_key, "bob", 20)
    bob_fp = json.loads(bob.stdout.readline())["ready"]
    for i in range(20):
        alice.send("bob", text=f"r{i:02d}")
    out, err = bob.communicate(timeout=90)
    assert bob.returncode == 0, err
    assert [m["text"] for m in lines_of(out) if "text" in m] == [f"r{i:02d}" for i in range(20)]
    wait_until(lambda: len(acks) >= 20, what="bob's answers")
    assert [m.text for m in acks] == [f"ack:r{i:02d}" for i in range(20)]

    # 2. bob is down: the stream keeps what alice sends
    for i in range(5):
        alice.send("bob", text=f"q{i}")
    alice.flush(timeout=30)

    # 3. bob restarts from its key file: same identity, the session continues
    bob = run_echo(tmp_path, hub, bob_key, "bob", 5)
    out, err = bob.communicate(timeout=90)
    assert bob.returncode == 0, err
    second = lines_of(out)
    assert second[0]["ready"] == bob_fp
    texts = [m for m in second if "text" in m]
    assert [m["text"] for m in texts] == [f"q{i}" for i in range(5)]
    assert not any(m["prekey"] for m in texts)
    assert not [m for m in second if "error" in m]
    assert second[-1]["status"]["received"] == 5
    wait_until(lambda: len(acks) >= 25, what="bob's answers after the restart")
    assert [m.text for m in acks[20:]] == [f"ack:q{i}" for i in range(5)]
    alice.close()


def test_the_hub_interface(hub):
    assert hub.get_bundle("nobody") is None
    a, b = Agent("a.b c*>", hub=hub), Agent("b", hub=hub)  # ids NATS subjects cannot hold
    assert hub.get_bundle("a.b c*>")["identity_key"] == a.public_bundle["identity_key"]
    assert {"a.b c*>", "b"} <= set(hub.list_agents())
    assert b.list_peers() == ["a.b c*>"]
    got: list = []
    a.on_message(got.append)
    with pytest.raises(ValueError, match="Peer 'ghost' not found on hub"):
        b.send("ghost", text="x")
        b.flush(10)
    before = hub.message_count()
    b.send("a.b c*>", text="hello")
    b.flush(10)
    assert hub.message_count() == before + 1
    wait_until(lambda: got, what="the message")
    assert got[0].text == "hello" and got[0].sender == "b"
    # presence: a connected agent keeps a fetch waiting at its consumer
    wait_until(lambda: hub.is_online("b"), what="b online")
    assert not hub.is_online("ghost")
    b.close()
    wait_until(lambda: not hub.is_online("b"), timeout=15, what="b offline")
    a.close()


def test_an_impostor_cannot_take_a_registered_id(tmp_path, hub):
    Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key").close()
    with pytest.raises(HubError, match="bound to another identity key"):
        Agent("bob", hub=hub)


def test_a_swapped_key_of_a_known_peer_is_detected(tmp_path, hub, cluster):
    """The cluster's clients are trusted with the directory (no authorization yet): one
    that rewrites a known peer's entry still cannot pass as that peer (pinning)."""
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    bob = Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key")
    got: list = []
    bob.on_message(got.append)
    alice.send("bob", text="pin bob")
    wait_until(lambda: got, what="the first message")
    bob.close()
    alice.close()

    from agentmesh.crypto import AgentKeyPair

    layout = NatsLayout(hub.settings.layout.prefix)
    impostor = AgentKeyPair.generate("bob").public_bundle()
    raw_kv_put(
        cluster.urls,
        layout.directory_bucket,
        layout.directory_key("bob"),
        json.dumps(impostor).encode(),
    )
    # alice restarts: a session loaded from disk starts a new set-up, with the bundle served
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    with pytest.raises(IdentityChangedError):
        alice.send("bob", text="secret for the real bob")
    alice.close()


def test_a_group_on_nats_reaches_every_member_also_one_that_was_offline(tmp_path, hub):
    """A group message is one ``send_group_nowait``: the NATS backend publishes a copy to each
    member's inbox subject (each with its own dedupe id, the message id being the same)."""
    got: dict[str, list[str]] = {"m1": [], "m2": [], "m3": []}
    members = {}
    for name in got:
        members[name] = Agent(name, hub=hub, keypair_path=tmp_path / f"{name}.key")
        members[name].on_message(lambda msg, n=name: got[n].append(msg.text))
    alice = Agent("alice", hub=hub)
    team = alice.create_group("team", members=list(got))
    team.send(text="one")
    alice.flush(20)
    wait_until(lambda: all(got.values()), what="every member's first message")
    members["m3"].close()  # offline: what follows waits in its inbox
    team.send(text="two")
    team.send(text="three")
    alice.flush(20)
    back = Agent("m3", hub=hub, keypair_path=tmp_path / "m3.key")
    back.on_message(lambda msg: got["m3"].append(msg.text))
    wait_until(lambda: len(got["m3"]) == 3 and len(got["m1"]) == 3, what="the rest")
    assert got == {name: ["one", "two", "three"] for name in got}
    for agent in (alice, back, members["m1"], members["m2"]):
        agent.close()
