"""rotate_identity on NatsHub (a real nats-server on 127.0.0.1): the directory re-binds the id
on statements from the bound key, drops the old key's one-time prekeys, and refuses any other
key; behind the authorization service, the service lets the new key in on the same rule."""

from __future__ import annotations

import contextlib
import sys
import threading
from itertools import pairwise

import pytest
from natsutil import fresh_prefix

from agentmesh import Agent, NatsHub
from agentmesh._native import sign_succession
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import HubError, NatsAuthError
from agentmesh.nats_cluster import NatsCluster

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats"), nodes=1) as running:
        yield running


def heard_by(agent: Agent) -> tuple[list[str], threading.Event]:
    texts: list[str] = []
    arrived = threading.Event()

    def on_message(msg) -> None:
        texts.append(msg.text)
        arrived.set()

    agent.on_message(on_message)
    return texts, arrived


def exchange_across_a_rotation(hub: NatsHub) -> None:
    with Agent("alice", hub=hub) as alice, Agent("bob", hub=hub) as bob:
        bob_heard, bob_got = heard_by(bob)
        alice_heard, alice_got = heard_by(alice)
        alice.send("bob", text="before")
        assert bob_got.wait(20)
        bob.send("alice", text="hello")
        assert alice_got.wait(20)
        bob_got.clear()
        alice_got.clear()
        new = alice.rotate_identity()
        alice.send("bob", text="after")
        assert bob_got.wait(20)
        bob.send("alice", text="back")
        assert alice_got.wait(20)
        assert bob_heard == ["before", "after"] and alice_heard == ["hello", "back"]
        assert hub.get_bundle("alice")["identity_key"] == alice.public_bundle["identity_key"]
        assert bob.connect("alice") == new
        # a first contact after the rotation claims a one-time prekey of the new key (the old
        # key's were dropped: the new key's ids start again, and an old one would not open)
        with Agent("carol", hub=hub) as carol:
            alice_got.clear()
            carol.send("alice", text="first contact")
            assert alice_got.wait(20)
        assert alice_heard[-1] == "first contact"
        assert alice.status()["rejected"] == bob.status()["rejected"] == 0


def test_agents_follow_a_rotation_on_nats(cluster) -> None:
    hub = NatsHub(cluster.urls, prefix=fresh_prefix(), timeout=20.0)
    try:
        exchange_across_a_rotation(hub)
    finally:
        hub.close()


def test_the_directory_refuses_another_key_without_the_bound_keys_statement(cluster) -> None:
    prefix = fresh_prefix()
    hub = NatsHub(cluster.urls, prefix=prefix, timeout=20.0)
    other = NatsHub(cluster.urls, prefix=prefix, timeout=20.0)
    try:
        with Agent("alice", hub=hub) as alice:
            stranger, impostor = AgentKeyPair.generate("alice"), AgentKeyPair.generate("alice")
            impostor.set_succession([sign_succession(stranger, impostor, 1, 1)])
            with pytest.raises(HubError, match="another identity key"):
                Agent("alice", hub=other, keypair=impostor)
            assert hub.get_bundle("alice")["identity_key"] == alice.public_bundle["identity_key"]
    finally:
        other.close()
        hub.close()


def test_the_auth_service_lets_a_rotated_key_in_and_no_other(tmp_path) -> None:
    pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")
    from agentmesh.nats_auth_config import AuthKeys, authorization_block
    from agentmesh.nats_auth_process import AuthServiceProcess

    keys = AuthKeys.create(tmp_path / "keys")
    with NatsCluster(tmp_path, nodes=1, authorization=authorization_block(keys)) as guarded:
        service = AuthServiceProcess(guarded.urls, tmp_path / "keys", tmp_path / "auth.log")
        service.start()
        hub = NatsHub(guarded.urls, auth=True, timeout=20.0)
        try:
            exchange_across_a_rotation(hub)
            stranger, impostor = AgentKeyPair.generate("alice"), AgentKeyPair.generate("alice")
            impostor.set_succession([sign_succession(stranger, impostor, 1, 1)])
            other = NatsHub(guarded.urls, auth=True, timeout=20.0)
            try:
                with pytest.raises(NatsAuthError):
                    Agent("alice", hub=other, keypair=impostor)
            finally:
                other.close()
        finally:
            hub.close()
            service.stop()


def test_the_connect_token_stays_within_a_control_line() -> None:
    import json

    from agentmesh._native import MAX_SUCCESSION_CHAIN, verify_bundle
    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_layout import NatsLayout

    agent_id = "a" * 200
    keys = [AgentKeyPair.generate(agent_id) for _ in range(MAX_SUCCESSION_CHAIN + 1)]
    chain = [sign_succession(a, b, i + 1, 1) for i, (a, b) in enumerate(pairwise(keys))]
    keys[-1].set_succession(chain)
    assert len(json.dumps(keys[-1].public_bundle())) > 3000
    token = agent_options(NatsLayout(), keys[-1])["token"]()
    assert len(token) <= 3000
    bundle = json.loads(token)
    assert verify_bundle(bundle) == agent_id
    assert 0 < len(bundle["succession"]) < MAX_SUCCESSION_CHAIN  # the newest kept
    assert bundle["succession"][-1] == keys[-1].public_bundle()["succession"][-1]


def test_a_stolen_old_key_connected_before_the_rotation_cannot_rebind_the_id(tmp_path) -> None:
    """A thief holding alice's old key, connected while she rotates, keeps its user (and with
    it the permission to write alice's directory key) until the user expires: it must still
    not be able to move the id to a key of its own (the hub cannot re-key an agent)."""
    pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")
    import asyncio
    import json

    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_auth_config import AuthKeys, authorization_block
    from agentmesh.nats_auth_process import AuthServiceProcess
    from agentmesh.nats_connection import connect
    from agentmesh.nats_layout import NatsLayout

    keys = AuthKeys.create(tmp_path / "keys")
    layout = NatsLayout()
    original = AgentKeyPair.generate("alice")
    stolen = AgentKeyPair.from_bytes(original.to_bytes())
    mallory = AgentKeyPair.generate("alice")
    mallory.set_succession([sign_succession(stolen, mallory, 1, 1)])

    async def overwrite(thief) -> None:
        kv = await thief.jetstream().key_value(layout.directory_bucket)
        doc = json.dumps(mallory.public_bundle(), separators=(",", ":"))
        await kv.put(layout.directory_key("alice"), doc.encode())

    with NatsCluster(tmp_path, nodes=1, authorization=authorization_block(keys)) as guarded:
        service = AuthServiceProcess(guarded.urls, tmp_path / "keys", tmp_path / "auth.log")
        service.start()
        hub = NatsHub(guarded.urls, auth=True, timeout=20.0)
        loop = asyncio.new_event_loop()
        thief = None
        try:
            with Agent("alice", hub=hub, keypair=original) as alice:
                options = agent_options(layout, stolen)
                thief = loop.run_until_complete(
                    connect(guarded.urls, connect_timeout=10, name="thief", options=options)
                )
                alice.rotate_identity()
                rotated = alice.public_bundle["identity_key"]
                assert hub.get_bundle("alice")["identity_key"] == rotated
                with contextlib.suppress(Exception):  # a refused write is the right outcome
                    loop.run_until_complete(asyncio.wait_for(overwrite(thief), 10))
                served = hub.get_bundle("alice")["identity_key"]
                assert served == rotated, "the old key's live connection re-bound the id"
        finally:
            if thief is not None:
                loop.run_until_complete(thief.close())
            loop.close()
            hub.close()
            service.stop()
