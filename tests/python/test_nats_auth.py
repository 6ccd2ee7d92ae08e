"""The NATS authorization service (``agentmesh nats-auth``) on a real nats-server: what a
connected agent may not do, with the credentials the service issued to it (a raw nats-py
connection), is refused by the server; a wrong, absent or replayed proof and an id bound to
another key are refused; an honest agent's messages, directory entry and prekeys survive it all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from natsutil import Raw, wait_until

from agentmesh import Agent, NatsHub
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import NatsAuthError
from agentmesh.nats_auth_client import agent_options, reader_options
from agentmesh.nats_auth_config import AuthKeys, authorization_block
from agentmesh.nats_auth_process import AuthServiceProcess
from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_layout import NatsLayout, token_of

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")
pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")

LAYOUT = NatsLayout()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A nats-server guarded by two authorization services."""
    root = tmp_path_factory.mktemp("nats-auth")
    keys = AuthKeys.create(root / "keys")
    with NatsCluster(root, nodes=1, authorization=authorization_block(keys)) as cluster:
        services = [
            AuthServiceProcess(cluster.urls, root / "keys", root / f"auth{i}.log")
            for i in (1, 2)
        ]
        try:
            for service in services:
                service.start()
            yield cluster, services
        finally:
            for service in services:
                service.stop()


def agent_raw(urls: list[str], keypair: Any) -> Raw:
    return Raw(urls, agent_options(LAYOUT, keypair))


def test_a_connected_agent_cannot_touch_another_agents_inbox_directory_or_prekeys(guarded):
    from nats.js import api

    cluster, _ = guarded
    hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
    got: list[str] = []
    bob = Agent("bob", hub=hub)
    alice = Agent("alice", hub=hub)
    bob_bundle = hub.get_bundle("bob")
    bob.close()  # offline: what alice sends waits in its inbox
    for i in range(3):
        alice.send("bob", text=f"secret {i}")
    alice.flush(20)
    mallory = AgentKeyPair.generate("mallory")
    stream, consumer = LAYOUT.stream, LAYOUT.consumer("bob")

    async def attack() -> None:
        async with agent_raw(cluster.urls, mallory) as m:
            js = m.nc.jetstream(timeout=1.0)
            # (the mallory id is bound now: the service bound it at connection)

            async def fetch_bobs_inbox() -> Any:
                sub = await js.pull_subscribe_bind(durable=consumer, stream=stream)
                return await sub.fetch(1, timeout=1.0)

            await m.refused("fetching bob's inbox", fetch_bobs_inbox)

            async def subscribe_inboxes() -> None:
                await m.nc.subscribe(f"{LAYOUT.prefix}.inbox.>")
                await m.nc.flush(1.0)
                raise RuntimeError("(subscribed)")

            await m.refused("a plain subscription to the inboxes", subscribe_inboxes)

            async def subscribe_replies() -> None:
                await m.nc.subscribe(f"{LAYOUT.reply_prefix('bob')}.>")
                await m.nc.flush(1.0)
                raise RuntimeError("(subscribed)")

            await m.refused("subscribing to bob's replies", subscribe_replies)
            await m.refused(
                "reading bob's inbox from the stream",
                lambda: js.get_msg(stream, seq=1),
            )
            await m.refused(
                "reading bob's inbox by direct get",
                lambda: js.get_msg(stream, subject=LAYOUT.inbox_filter("bob"), direct=True),
            )
            await m.refused(
                "deleting bob's consumer", lambda: js.delete_consumer(stream, consumer)
            )
            await m.refused(
                "replacing bob's consumer",
                lambda: js.add_consumer(
                    stream,
                    api.ConsumerConfig(
                        durable_name=consumer,
                        filter_subject=LAYOUT.inbox_filter("bob"),
                        ack_policy=api.AckPolicy.NONE,
                    ),
                ),
            )
            await m.refused(
                "making its own consumer on bob's inbox",
                lambda: js.add_consumer(
                    stream,
                    api.ConsumerConfig(
                        durable_name=LAYOUT.consumer("mallory"),
                        filter_subject=LAYOUT.inbox_filter("bob"),
                    ),
                ),
            )

            async def ack_bobs_messages() -> None:
                for seq in range(1, 4):
                    await m.nc.publish(f"$JS.ACK.{stream}.{consumer}.1.{seq}.{seq}.0.0", b"+ACK")
                await m.nc.flush(1.0)
                await asyncio.sleep(0.3)
                raise RuntimeError("(published)")

            await m.refused("acknowledging (deleting) bob's messages", ack_bobs_messages)
            await m.refused("purging the stream", lambda: js.purge_stream(stream))
            await m.refused("deleting the stream", lambda: js.delete_stream(stream))

            directory = await js.key_value(LAYOUT.directory_bucket)
            prekeys = await js.key_value(LAYOUT.prekey_bucket)
            forged = json.dumps(mallory.public_bundle()).encode()
            await m.refused(
                "writing bob's directory entry",
                lambda: directory.put(LAYOUT.directory_key("bob"), forged),
            )
            await m.refused(
                "deleting bob's directory entry",
                lambda: directory.delete(LAYOUT.directory_key("bob")),
            )
            await m.refused(
                "injecting prekeys of bob",
                lambda: prekeys.put(LAYOUT.prekey_key("bob"), b'[{"id":1,"key":"AAAA"}]'),
            )
            await m.refused(
                "draining bob's prekeys", lambda: prekeys.put(LAYOUT.prekey_key("bob"), b"[]")
            )
            await m.refused(
                "sending as alice",
                lambda: js.publish(LAYOUT.inbox_subject("bob", "alice"), b"x", timeout=1.0),
            )
            await m.refused(
                "claiming a prekey as bob",
                lambda: m.nc.request(LAYOUT.claim_subject("bob"), b'{"agent_id":"alice"}', 1.0),
            )
            for bucket, key in (
                (LAYOUT.directory_bucket, LAYOUT.directory_key("mallory")),
                (LAYOUT.prekey_bucket, LAYOUT.prekey_key("mallory")),
            ):
                # not even its own keys (the service writes them for it, for the key the
                # directory binds only), with or without a rollup header (which would purge
                # every other key of the bucket; bob's entry is checked below)
                for headers in (None, {"Nats-Rollup": "all"}):
                    await m.refused(
                        f"writing its own {key}",
                        lambda b=bucket, k=key, h=headers: js.publish(
                            f"$KV.{b}.{k}", b"[]", timeout=1.0, headers=h
                        ),
                    )
            await m.refused(
                "answering authorization requests",
                lambda: m.nc.request("$SYS.REQ.USER.AUTH", b"", 1.0),
            )
            # what it may do: read bob's bundle, and send as itself
            assert (await directory.get(LAYOUT.directory_key("bob"))).value
            ack = await js.publish(LAYOUT.inbox_subject("bob", "mallory"), b"not an envelope")
            assert ack.seq > 0

    try:
        asyncio.run(attack())
        # nothing of bob's was lost, read or replaced
        assert hub.get_bundle("bob") == bob_bundle
        bob = Agent("bob", hub=hub, keypair=bob.keypair)
        bob.on_message(lambda msg: got.append(msg.text))
        wait_until(lambda: len(got) >= 3, 30, "bob's messages")
        assert got == ["secret 0", "secret 1", "secret 2"]
    finally:
        alice.close()
        bob.close()
        hub.close()


def test_nobody_can_learn_who_has_queued_envelopes_for_whom(guarded):
    cluster, _ = guarded
    hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
    rita = Agent("rita", hub=hub)
    rita.close()  # offline: what peggy sends waits in her inbox, under (rita, peggy)
    peggy = Agent("peggy", hub=hub)
    peggy.send("rita", text="between us")
    peggy.flush(20)
    stream = LAYOUT.stream
    try:

        async def spy(raw: Raw) -> None:
            async with raw as r:
                js = r.nc.jetstream(timeout=1.0)
                await r.refused(
                    "counting envelopes per inbox subject (recipient and sender)",
                    lambda: js.stream_info(stream, subjects_filter=">"),
                )
                await r.refused(
                    "reading rita's consumer (her traffic)",
                    lambda: js.consumer_info(stream, LAYOUT.consumer("rita")),
                )
                await r.refused(
                    "listing the consumers",
                    lambda: r.nc.request(f"$JS.API.CONSUMER.LIST.{stream}", b"{}", 1.0),
                )
                await r.refused(
                    "listing the consumers' names",
                    lambda: r.nc.request(f"$JS.API.CONSUMER.NAMES.{stream}", b"{}", 1.0),
                )
                # what the service answers instead: the stream's settings, no subjects
                asked = json.dumps({"subjects_filter": ">"}).encode()
                answer = json.loads((await r.nc.request(LAYOUT.service_stream, asked, 5.0)).data)
                assert answer["config"]["name"] == stream and answer["state"]["last_seq"] >= 1
                assert "subjects" not in answer["state"], answer["state"]
                assert token_of("peggy") not in json.dumps(answer)

        asyncio.run(spy(agent_raw(cluster.urls, AgentKeyPair.generate("trudy"))))
        asyncio.run(spy(Raw(cluster.urls, reader_options())))
        # presence and the message count still answer, through the service
        assert hub.is_online("rita") is False
        assert hub.message_count() >= 1
        got: list[str] = []
        rita = Agent("rita", hub=hub, keypair=rita.keypair)
        rita.on_message(lambda msg: got.append(msg.text))
        wait_until(lambda: got == ["between us"], 30, "rita's message")
        wait_until(lambda: hub.is_online("rita"), 10, "rita online")
    finally:
        peggy.close()
        rita.close()
        hub.close()


def test_prekey_claims_go_through_the_service_within_a_budget(guarded):
    cluster, services = guarded
    hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
    carol = Agent("carol", hub=hub)
    eve = AgentKeyPair.generate("eve")

    async def claims() -> list[Any]:
        async with agent_raw(cluster.urls, eve) as e:
            answers = []
            for _ in range(6):
                reply = await e.nc.request(
                    LAYOUT.claim_subject("eve"), b'{"agent_id":"carol"}', timeout=5.0
                )
                answers.append(json.loads(reply.data)["prekey"])
            return answers

    try:
        answers = asyncio.run(claims())
        granted = [a for a in answers if a is not None]
        assert granted and all("key" in a for a in granted)
        # one per peer per minute and service (each service keeps its own budgets): no draining
        assert len(granted) <= len(services)
        assert len({a["id"] for a in granted}) == len(granted)
    finally:
        carol.close()
        hub.close()


def test_a_wrong_absent_or_replayed_proof_is_refused(guarded):
    import nats

    cluster, _ = guarded
    victim = AgentKeyPair.generate("victim")
    thief = AgentKeyPair.generate("thief")
    bundle = json.dumps(victim.public_bundle())

    def signed_by(keypair: Any, fixed_nonce: str | None = None) -> Callable[[str], bytes]:
        def sign(nonce: str) -> bytes:
            sig = keypair.sign_nats_connect((fixed_nonce or nonce).encode())
            return base64.urlsafe_b64encode(sig).rstrip(b"=")

        return sign

    attempts = {
        "signed by another key": {"token": bundle, "signature_cb": signed_by(thief)},
        "no proof, only the bundle": {"token": bundle},
        "a proof over another nonce": {
            "token": bundle,
            "signature_cb": signed_by(victim, "an-old-nonce"),
        },
        "a raw nonce signature (an nkey's)": {
            "token": bundle,
            "signature_cb": lambda nonce: base64.urlsafe_b64encode(b"\0" * 64),
        },
        "not a bundle": {"token": "{}", "signature_cb": signed_by(victim)},
    }

    async def attempt(options: dict[str, Any]) -> None:
        nc = await nats.connect(
            cluster.urls, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0,
            **options,
        )
        await nc.close()

    for what, options in attempts.items():
        with pytest.raises(Exception) as caught:
            asyncio.run(attempt(options))
        assert "authorization" in str(caught.value).lower() or "Authorization" in repr(
            caught.value
        ), what
    hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
    try:
        assert "victim" not in hub.list_agents()  # no refused attempt bound the id
    finally:
        hub.close()


def test_an_id_bound_to_another_key_is_refused_at_connection(guarded):
    cluster, _ = guarded
    hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
    try:
        Agent("dave", hub=hub).close()
        with pytest.raises(NatsAuthError, match="nats-auth"):
            Agent("dave", hub=hub)  # another key
    finally:
        hub.close()


def test_a_reader_may_look_up_but_not_send(guarded):
    cluster, _ = guarded

    async def read() -> None:
        async with Raw(cluster.urls, reader_options()) as r:
            js = r.nc.jetstream(timeout=1.0)
            directory = f"KV_{LAYOUT.directory_bucket}"
            assert (await js.stream_info(directory)).config.name == directory
            await r.refused(
                "a reader sending",
                lambda: js.publish(f"{LAYOUT.prefix}.inbox.{token_of('bob')}.x", b"x"),
            )

    asyncio.run(read())


def test_auth_true_on_a_cluster_without_the_service_is_a_clear_error(tmp_path):
    from agentmesh import HubError

    refused = pytest.raises(HubError, match="no authorization service guards it")
    with NatsCluster(tmp_path, nodes=1) as open_cluster, refused:
        NatsHub(open_cluster.urls, auth=True, timeout=5.0)
