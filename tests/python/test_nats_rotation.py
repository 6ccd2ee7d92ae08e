"""Identity rotation and NatsHub (a real nats-server on 127.0.0.1): ``rotate_identity`` is
refused before any change (a connection made with the old key could still re-bind the id);
the directory still re-binds an id on statements from the bound key, drops the old key's
one-time prekeys, and refuses any other key; behind the authorization service, the service
lets the new key in on the same rule."""

from __future__ import annotations

import sys
import threading
from itertools import pairwise

import pytest
from natsutil import fresh_prefix

from agentmesh import Agent, NatsHub
from agentmesh._native import sign_succession
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import HubError, IdentityRotationError, NatsAuthError
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


def exchange_across_a_succession(hub: NatsHub) -> None:
    """alice moves to a key signed over by her bound one (made by hand: NatsHub refuses
    rotate_identity), and bob follows it."""
    original, successor = AgentKeyPair.generate("alice"), AgentKeyPair.generate("alice")
    successor.set_succession([sign_succession(original, successor, 1, 1)])
    with Agent("bob", hub=hub) as bob:
        bob_heard, bob_got = heard_by(bob)
        with Agent("alice", hub=hub, keypair=original) as alice:
            alice.send("bob", text="before")
            assert bob_got.wait(20)
        with Agent("alice", hub=hub, keypair=successor) as alice:
            alice_heard, alice_got = heard_by(alice)
            assert hub.get_bundle("alice")["identity_key"] == alice.public_bundle["identity_key"]
            assert bob.connect("alice") == successor.fingerprint  # followed, no error
            bob.send("alice", text="back")
            assert alice_got.wait(20)
            # a first contact after the re-binding claims a one-time prekey of the new key (the
            # old key's were dropped: the new key's ids start again, an old one would not open)
            with Agent("carol", hub=hub) as carol:
                alice_got.clear()
                carol.send("alice", text="first contact")
                assert alice_got.wait(20)
            assert alice_heard == ["back", "first contact"] and bob_heard == ["before"]
            assert alice.status()["rejected"] == bob.status()["rejected"] == 0


def test_agents_follow_a_succession_on_nats(cluster) -> None:
    hub = NatsHub(cluster.urls, prefix=fresh_prefix(), timeout=20.0)
    try:
        exchange_across_a_succession(hub)
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
            exchange_across_a_succession(hub)
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


def test_a_stolen_old_key_connected_before_the_rotation_cannot_rebind_the_id(
    cluster, tmp_path
) -> None:
    """A thief holding alice's old key, connected while she rotates, would keep its user (and
    with it the permission to write alice's directory entry) until the user expires, and could
    sign the id over to a key of his own. Until bundle writes go through the authorization
    service, NatsHub refuses the rotation itself, before anything changes."""
    hub = NatsHub(cluster.urls, prefix=fresh_prefix(), timeout=20.0)
    path = tmp_path / "alice.key"
    try:
        with Agent("alice", hub=hub, keypair_path=path) as alice:
            before = alice.public_bundle["identity_key"]
            with pytest.raises(IdentityRotationError, match="rotation on NATS is not yet"):
                alice.rotate_identity()
            assert alice.public_bundle["identity_key"] == before
            assert hub.get_bundle("alice")["identity_key"] == before
            assert not path.with_name("alice.key.succession").exists()
        with Agent("alice", hub=hub, keypair_path=path) as alice:
            assert alice.public_bundle["identity_key"] == before
    finally:
        hub.close()
