"""Identity rotation and NatsHub (a real nats-server on 127.0.0.1): the directory re-binds an
id on statements from the bound key, drops the old key's one-time prekeys, and refuses any
other key; behind the authorization service, the service lets the new key in on the same rule,
``rotate_identity`` works, and a connection made with the old key can write nothing in the
directory; without the service ``rotate_identity`` is refused before any change."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
from itertools import pairwise

import pytest
from natsutil import Raw, fresh_prefix

from agentmesh import Agent, NatsHub
from agentmesh._native import sign_succession
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import HubError, HubRequestError, IdentityRotationError, NatsAuthError
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


def test_rotation_without_the_authorization_service_is_refused(cluster, tmp_path) -> None:
    """On an open cluster any client may write the directory: a thief holding the key rotated
    away from could sign the id over to a key of his own. NatsHub refuses the rotation there,
    before anything changes."""
    hub = NatsHub(cluster.urls, prefix=fresh_prefix(), timeout=20.0)
    path = tmp_path / "alice.key"
    try:
        with Agent("alice", hub=hub, keypair_path=path) as alice:
            before = alice.public_bundle["identity_key"]
            with pytest.raises(IdentityRotationError, match="needs the authorization service"):
                alice.rotate_identity()
            assert alice.public_bundle["identity_key"] == before
            assert hub.get_bundle("alice")["identity_key"] == before
            assert not path.with_name("alice.key.succession").exists()
        with Agent("alice", hub=hub, keypair_path=path) as alice:
            assert alice.public_bundle["identity_key"] == before
    finally:
        hub.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A nats-server guarded by the authorization service."""
    pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")
    from agentmesh.nats_auth_config import AuthKeys, authorization_block
    from agentmesh.nats_auth_process import AuthServiceProcess

    root = tmp_path_factory.mktemp("nats-guarded")
    keys = AuthKeys.create(root / "keys")
    with NatsCluster(root, nodes=1, authorization=authorization_block(keys)) as running:
        service = AuthServiceProcess(running.urls, root / "keys", root / "auth.log")
        service.start()
        try:
            yield running
        finally:
            service.stop()


def test_a_key_rotated_away_from_cannot_write_the_directory(guarded, tmp_path) -> None:
    """A thief holding alice's old key, connected while she rotates, keeps his NATS user (and
    its permissions) until it expires. He can write nothing in the directory: not its keys
    directly, not through the service for the old key, and he may not name the new one."""
    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_auth_writes import write_bundle, write_prekeys
    from agentmesh.nats_connection import connect
    from agentmesh.nats_layout import NatsLayout

    layout = NatsLayout()
    hub = NatsHub(guarded.urls, auth=True, timeout=20.0)
    path = tmp_path / "alice.key"
    try:
        with Agent("bob", hub=hub) as bob, Agent("alice", hub=hub, keypair_path=path) as alice:
            bob_heard, bob_got = heard_by(bob)
            alice.send("bob", text="before")
            assert bob_got.wait(20)
            old = alice.keypair
            thief_key = AgentKeyPair.generate("alice")
            thief_key.set_succession([sign_succession(old, thief_key, 1, 1)])

            async def steal() -> None:
                async with Raw(guarded.urls, agent_options(layout, old)) as thief:
                    loop = asyncio.get_running_loop()
                    new_fingerprint = await loop.run_in_executor(None, alice.rotate_identity)
                    assert new_fingerprint != old.fingerprint
                    kv = await thief.nc.jetstream(timeout=2.0).key_value(layout.directory_bucket)
                    forged = json.dumps(thief_key.public_bundle()).encode()
                    await thief.refused(
                        "writing alice's directory entry",
                        lambda: kv.put(layout.directory_key("alice"), forged),
                    )
                    with pytest.raises(HubRequestError, match="another identity key"):
                        bundle = thief_key.public_bundle()
                        await write_bundle(thief.nc, layout, old, bundle, 5.0)
                    with pytest.raises(HubRequestError, match="another identity key"):
                        prekeys = [{"id": 1, "key": "A" * 43 + "="}]
                        await write_prekeys(thief.nc, layout, old, prekeys, 5.0)
                    await thief.refused(
                        "writing through the service for the new key",
                        lambda: thief.nc.request(
                            layout.write_subject("bundle", "alice", new_fingerprint), forged, 1.0
                        ),
                    )
                # and no new connection (a renewal) with the old key gets in
                with pytest.raises(NatsAuthError):
                    await connect(
                        guarded.urls,
                        connect_timeout=5.0,
                        name="thief-again",
                        options=agent_options(layout, old),
                        guarded=True,
                    )

            asyncio.run(steal())
            assert hub.get_bundle("alice")["identity_key"] == alice.public_bundle["identity_key"]
            alice_heard, alice_got = heard_by(alice)
            assert bob.connect("alice") == alice.fingerprint  # followed the rotation
            bob.send("alice", text="after")
            assert alice_got.wait(20)
            with Agent("carol", hub=hub) as carol:  # a first contact: the new key's prekeys
                alice_got.clear()
                carol.send("alice", text="first contact")
                assert alice_got.wait(20)
            assert alice_heard == ["after", "first contact"] and bob_heard == ["before"]
            assert alice.status()["rejected"] == bob.status()["rejected"] == 0
    finally:
        hub.close()


class _Request:
    """A request as the service receives it (a subject, a body, a way to answer)."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data = subject, data
        self.answers: list[dict] = []

    async def respond(self, body: bytes) -> None:
        self.answers.append(json.loads(body))


async def _dropped_before(agent_id: str) -> None:
    return None


def test_prekeys_added_for_a_key_rotated_away_meanwhile_are_dropped(cluster) -> None:
    """The service checks the binding, adds prekeys, and the rotation lands in between (it
    drops the old key's stock before re-binding): what was added for the old key must not stay
    in the stock to be handed out for the new one."""
    import nats

    from agentmesh.nats_auth_writes import answer_write
    from agentmesh.nats_directory import NatsDirectory
    from agentmesh.nats_layout import NatsLayout
    from agentmesh.nats_setup import NatsSettings, ensure_layout

    layout = NatsLayout(fresh_prefix())
    original, successor = AgentKeyPair.generate("alice"), AgentKeyPair.generate("alice")
    successor.set_succession([sign_succession(original, successor, 1, 1)])

    async def race() -> tuple[list, list]:
        nc = await nats.connect(cluster.urls)
        try:
            js = nc.jetstream(timeout=5.0)
            await ensure_layout(js, NatsSettings(layout=layout), 1)
            directory = NatsDirectory(js, layout, timeout=10.0)
            await directory.bind(original.public_bundle())
            add = directory.add_prekeys

            async def add_then_rotate(agent_id: str, prekeys: list) -> int:
                held = await add(agent_id, prekeys)
                # the rotation's re-binding, whose drop of the old stock ran before this add
                drop = directory.drop_prekeys
                directory.drop_prekeys = _dropped_before  # type: ignore[method-assign]
                try:
                    await directory.bind(successor.public_bundle())
                finally:
                    directory.drop_prekeys = drop  # type: ignore[method-assign]
                return held

            directory.add_prekeys = add_then_rotate  # type: ignore[method-assign]
            prekeys = [{"id": i, "key": base64.b64encode(bytes([i]) * 32).decode()} for i in (1, 2)]
            request = _Request(
                layout.write_subject("prekeys", "alice", original.fingerprint),
                json.dumps({"prekeys": prekeys}).encode(),
            )
            await answer_write(directory, request)
            stock, _ = await directory._prekeys("alice")
            return request.answers, stock
        finally:
            await nc.close()

    answers, stock = asyncio.run(race())
    assert len(answers) == 1 and "another identity key" in answers[0]["message"], answers
    assert stock == []
