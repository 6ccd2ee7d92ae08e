"""The NATS authorization service's availability, on a real nats-server: with the service down
a new connection fails with a clear error while existing ones carry on; of two services one
is enough; users expire and connected agents renew theirs without losing a message."""

from __future__ import annotations

import logging
import sys
import time

import pytest
from natsutil import auth_services, wait_until

from agentmesh import Agent, NatsHub
from agentmesh.errors import NatsAuthError
from agentmesh.nats_auth_budgets import RegistrationBudget
from agentmesh.nats_auth_config import AuthKeys, authorization_block
from agentmesh.nats_cluster import NatsCluster

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")
pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")


def guarded_cluster(root, nodes: int = 1):
    keys = AuthKeys.create(root / "keys")
    return NatsCluster(root, nodes=nodes, authorization=authorization_block(keys))


def exchange(alice: Agent, bob: Agent, got: list[str], count: int, pause: float = 0.0) -> None:
    start = len(got)
    for i in range(count):
        alice.send("bob", text=f"m{i}")
        if pause:
            time.sleep(pause)
    alice.flush(30)
    wait_until(lambda: len(got) >= start + count, 30, "the messages")


def test_service_down_new_connections_fail_clearly_existing_ones_carry_on(tmp_path):
    with guarded_cluster(tmp_path) as cluster:
        running = auth_services(cluster, tmp_path, 2)
        try:
            for service in running:
                service.start()
            hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
            got: list[str] = []
            alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
            bob.on_message(lambda msg: got.append(msg.text))
            exchange(alice, bob, got, 3)
            for service in running:
                service.kill()
            started = time.monotonic()
            with pytest.raises(NatsAuthError, match="authorization service"):
                NatsHub(cluster.urls, auth=True, timeout=20.0, connect_timeout=5.0)
            assert time.monotonic() - started < 30
            with pytest.raises(NatsAuthError, match="nats-auth"):
                Agent("carol", hub=hub)
            exchange(alice, bob, got, 5)  # the connected ones carry on
            assert got == [f"m{i}" for i in range(3)] + [f"m{i}" for i in range(5)]
            alice.close(), bob.close(), hub.close()
        finally:
            for service in running:
                service.stop()


def test_of_two_services_one_is_enough(tmp_path):
    with guarded_cluster(tmp_path, nodes=3) as cluster:
        first, second = auth_services(cluster, tmp_path, 2)
        try:
            first.start(), second.start()
            first.kill()
            hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
            got: list[str] = []
            agents = [Agent(f"a{i}", hub=hub) for i in range(4)]  # each a new connection
            bob = Agent("bob", hub=hub)
            bob.on_message(lambda msg: got.append(msg.text))
            exchange(agents[0], bob, got, 3)
            for agent in [*agents, bob]:
                agent.close()
            hub.close()
        finally:
            first.stop(), second.stop()


def test_users_expire_and_connected_agents_renew_them(tmp_path):
    with guarded_cluster(tmp_path) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1, lifetime=3.0)
        try:
            service.start()
            hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
            got: list[str] = []
            alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
            bob.on_message(lambda msg: got.append(msg.text))
            exchange(alice, bob, got, 20, pause=0.5)  # 10 s: three lifetimes
            assert got == [f"m{i}" for i in range(20)]
            renewals = [link.backend._renewal.renewals for link in hub._links.values()]
            assert all(count >= 2 for count in renewals), renewals
            assert hub.list_agents() == ["alice", "bob"]  # the lookups renew theirs too
            alice.close(), bob.close(), hub.close()
        finally:
            service.stop()


def rebind(urls: list[str], seed: bytes, agent_id: str) -> None:
    """As an operator (the service's own user): binds ``agent_id`` to another key."""
    import asyncio
    import json

    import nats

    from agentmesh.crypto import AgentKeyPair
    from agentmesh.nats_layout import NatsLayout

    async def put() -> None:
        nc = await nats.connect(urls, connect_timeout=5, nkeys_seed_str=seed.decode("ascii"))
        try:
            layout = NatsLayout()
            kv = await nc.jetstream(timeout=5).key_value(layout.directory_bucket)
            bundle = AgentKeyPair.generate(agent_id).public_bundle()
            value = json.dumps(bundle, separators=(",", ":"), sort_keys=True).encode()
            await kv.put(layout.directory_key(agent_id), value)
        finally:
            await nc.close()

    asyncio.run(put())


def test_a_refused_renewal_is_counted_as_failed_not_as_a_renewal(tmp_path):
    with guarded_cluster(tmp_path) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1, lifetime=3.0)
        try:
            service.start()
            hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
            alice = Agent("alice", hub=hub)
            renewal = hub._links["alice"].backend._renewal
            wait_until(lambda: renewal.renewals >= 1, 20, "a first renewal")
            rebind(cluster.urls, AuthKeys.load(tmp_path / "keys").service.seed, "alice")
            before = renewal.renewals
            # (the service answers its pings, and refuses alice's reconnect: bound elsewhere)
            refused = "'alice' is bound to another identity key"
            wait_until(lambda: refused in service.log_tail(), 20, "the refused reconnect")
            time.sleep(1.0)
            assert renewal.renewals == before
            wait_until(lambda: getattr(renewal, "failed_renewals", 0) >= 1, 10, "a failure")
            alice.close(), hub.close()
        finally:
            service.stop()


def test_one_client_cannot_mint_new_agent_ids_without_bound(tmp_path):
    with guarded_cluster(tmp_path) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1, options=["--new-ids-per-source", "3"])
        try:
            service.start()
            hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
            first = Agent("a0", hub=hub, keypair_path=tmp_path / "a0.key")
            others = [Agent(f"a{i}", hub=hub) for i in (1, 2)]
            with pytest.raises(NatsAuthError, match="nats-auth"):
                Agent("a3", hub=hub)  # a fourth new id from 127.0.0.1 within the minute
            reason = "too many new agent ids from 127.0.0.1"
            wait_until(lambda: reason in service.log_tail(), 5, "the reason in the log")
            first.close()
            # an id already bound is no new one: its owner gets back in
            first = Agent("a0", hub=hub, keypair_path=tmp_path / "a0.key")
            assert hub.list_agents() == ["a0", "a1", "a2"]
            for agent in [first, *others]:
                agent.close()
            hub.close()
        finally:
            service.stop()


def test_the_registration_budget_counts_per_source_and_in_all_for_a_minute():
    budget = RegistrationBudget(per_source=2, in_all=3)
    assert budget.allow("10.0.0.1", 0.0) and budget.allow("10.0.0.1", 1.0)
    assert not budget.allow("10.0.0.1", 2.0)  # its own budget spent
    assert budget.allow("10.0.0.2", 3.0)
    assert not budget.allow("10.0.0.3", 4.0)  # everyone's budget spent
    assert budget.allow("10.0.0.1", 60.5)  # a minute after its first
    with pytest.raises(ValueError, match="at least 1"):
        RegistrationBudget(per_source=0)


def test_new_keys_are_private_and_the_servers_config_is_printed(tmp_path, capsys):
    from agentmesh.cli import main
    from agentmesh.nats_cluster import free_ports

    (port,) = free_ports(1)  # nothing listens there: the service cannot start
    servers = f"nats://127.0.0.1:{port}"
    command = ["nats-auth", "--servers", servers, "--keys", str(tmp_path / "k")]
    code = main([*command, "--new-keys", "--connect-timeout", "1"])
    out = capsys.readouterr()
    assert code == 1 and "cannot connect" in out.err
    keys = AuthKeys.load(tmp_path / "k")
    assert f"issuer: {keys.issuer.public_key}" in out.out
    assert f"auth_users: [ {keys.service.public_key} ]" in out.out
    for name in ("issuer.nk", "service.nk"):
        assert (tmp_path / "k" / name).stat().st_mode & 0o077 == 0
    assert main([*command, "--new-keys"]) == 1  # never replaced
    assert "exists: not replaced" in capsys.readouterr().err


def test_static_users_the_alternative_for_small_setups(tmp_path):
    """Without the service: a static user per agent (``static_user``); they talk, and an agent
    cannot make its consumer read another's inbox (the filter is pinned by the subject)."""
    import asyncio
    import json as jsonlib

    import nats

    from agentmesh.nats_auth_config import static_user
    from agentmesh.nats_layout import NatsLayout

    layout = NatsLayout()
    users = [static_user(layout, name, f"pw-{name}") for name in ("alice", "bob")]
    admin = "{ user: admin, password: pw-admin }"
    block = "authorization { users: [ " + "\n".join([admin, *users]) + " ] }"
    with NatsCluster(tmp_path, nodes=1, authorization=block) as cluster:
        port = cluster.nodes[0].port
        NatsHub([f"nats://admin:pw-admin@127.0.0.1:{port}"]).close()  # the stream, buckets
        hubs = [NatsHub([f"nats://{n}:pw-{n}@127.0.0.1:{port}"]) for n in ("alice", "bob")]
        got: list[str] = []
        bob = Agent("bob", hub=hubs[1])
        bob.on_message(lambda msg: got.append(msg.text))
        alice = Agent("alice", hub=hubs[0])
        alice.send("bob", text="static")
        alice.flush(30)
        wait_until(lambda: got == ["static"], 30, "the message")

        async def steal() -> bytes:
            nc = await nats.connect(
                f"nats://alice:pw-alice@127.0.0.1:{port}", inbox_prefix=layout.reply_prefix("alice")
            )
            try:
                consumer = layout.consumer("alice")
                subject = (
                    f"$JS.API.CONSUMER.CREATE.{layout.stream}.{consumer}."
                    f"{layout.inbox_filter('alice')}"
                )
                config = {
                    "name": consumer,
                    "durable_name": consumer,
                    "filter_subject": layout.inbox_filter("bob"),
                }
                body = jsonlib.dumps({"stream_name": layout.stream, "config": config})
                return bytes((await nc.request(subject, body.encode(), timeout=5)).data)
            finally:
                await nc.close()

        answer = jsonlib.loads(asyncio.run(steal()))
        # "Consumer create request did not match filtered subject from create subject"
        assert answer.get("error", {}).get("err_code") == 10131, answer
        alice.close(), bob.close()
        for hub in hubs:
            hub.close()


def test_many_agents_connecting_at_once_all_get_in(tmp_path):
    """The service decides requests side by side: forty first connections together (each binds
    an id and makes a consumer) all get in, within the servers' callout timeout."""
    import asyncio

    from agentmesh.crypto import AgentKeyPair
    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_connection import connect
    from agentmesh.nats_layout import NatsLayout

    with guarded_cluster(tmp_path, nodes=3) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1)
        try:
            service.start()
            keypairs = [AgentKeyPair.generate(f"crowd{i}") for i in range(40)]

            async def one(keypair) -> None:
                options = agent_options(NatsLayout(), keypair)
                nc = await connect(
                    cluster.urls, connect_timeout=10, name="crowd", options=options, guarded=True
                )
                await nc.close()

            async def crowd() -> None:
                await asyncio.gather(*(one(keypair) for keypair in keypairs))

            asyncio.run(crowd())
            hub = NatsHub(cluster.urls, auth=True)
            assert len(hub.list_agents()) == 40
            hub.close()
        finally:
            service.stop()


def test_a_first_connection_turned_away_once_tries_again_and_gets_in(tmp_path, caplog):
    """A server whose callout got no answer in time turns the connection away: once is no
    verdict (the service may be starting, or busy), so the agent tries again and gets in once
    the service answers."""
    import asyncio

    from agentmesh.crypto import AgentKeyPair
    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_connection import connect
    from agentmesh.nats_layout import NatsLayout

    with guarded_cluster(tmp_path) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1)
        try:
            options = agent_options(NatsLayout(), AgentKeyPair.generate("early"))

            async def agent_before_its_service() -> None:
                connecting = asyncio.ensure_future(
                    connect(
                        cluster.urls,
                        connect_timeout=10,
                        name="early",
                        options=options,
                        guarded=True,
                    )
                )
                await asyncio.sleep(0.5)  # its first callout is out, and nobody answers it
                await asyncio.to_thread(service.start)
                nc = await connecting
                await nc.close()

            caplog.set_level(logging.INFO, logger="agentmesh.nats")
            asyncio.run(agent_before_its_service())
            assert "turned away (1 of 2)" in caplog.text
        finally:
            service.stop()


def test_a_first_connection_whose_service_answers_after_three_seconds_gets_in(
    tmp_path, caplog
):
    """A server whose callout is pending sends its own PING after 2 s, before answering the
    client's; nats-py took that for the end of its handshake and returned a client that was
    neither connected nor working. The handshake answers it and waits for the verdict: the
    agent is in as soon as its slow service answers, and its connection works."""
    import asyncio
    import os
    import signal
    import threading

    from agentmesh.crypto import AgentKeyPair
    from agentmesh.nats_auth_client import agent_options
    from agentmesh.nats_auth_queries import is_online
    from agentmesh.nats_connection import connect
    from agentmesh.nats_layout import NatsLayout

    with guarded_cluster(tmp_path) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1)
        resume = threading.Timer(3.0, lambda: os.kill(service.pid, signal.SIGCONT))
        try:
            service.start()
            options = agent_options(NatsLayout(), AgentKeyPair.generate("patient"))

            async def behind_a_slow_service() -> float:
                started = time.monotonic()
                nc = await connect(
                    cluster.urls, connect_timeout=10, name="patient", options=options,
                    guarded=True,
                )  # fmt: skip
                took = time.monotonic() - started
                assert nc.is_connected
                # (a client left half-connected never sends: nats-py stopped its flusher)
                assert isinstance(await is_online(nc, NatsLayout(), "patient", 5.0), bool)
                await nc.close()
                return took

            caplog.set_level(logging.INFO, logger="agentmesh.nats")
            os.kill(service.pid, signal.SIGSTOP)  # it answers once it runs again, in 3 s
            resume.start()
            took = asyncio.run(behind_a_slow_service())
            # (in at the answer, by its first handshake: not turned away, not left unconnected)
            assert 2.5 < took < 8.0, took
            assert "turned away" not in caplog.text
        finally:
            resume.cancel()
            if service.alive():
                os.kill(service.pid, signal.SIGCONT)
            service.stop()


def test_agents_whose_users_expired_with_no_service_get_back_in_when_one_returns(tmp_path):
    with guarded_cluster(tmp_path) as cluster:
        (service,) = auth_services(cluster, tmp_path, 1, lifetime=5.0)
        try:
            service.start()
            hub = NatsHub(cluster.urls, auth=True, timeout=30.0)
            got: list[str] = []
            alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
            bob.on_message(lambda msg: got.append(msg.text))
            exchange(alice, bob, got, 2)
            service.kill()
            alice.send("bob", text="while down")  # carries on until its user expires
            wait_until(lambda: "while down" in got, 10, "a message with the service down")
            time.sleep(8)  # every user has expired now; the agents keep reconnecting
            alice.send("bob", text="after expiry")
            service.start()
            alice.flush(60)
            wait_until(lambda: "after expiry" in got, 60, "the message after the service came back")
            exchange(alice, bob, got, 3)
            alice.close(), bob.close(), hub.close()
        finally:
            service.stop()


def test_claim_budgets_keep_nothing_for_refused_or_old_claims():
    from agentmesh.nats_auth_service import ClaimBudget

    budget = ClaimBudget(per_requester=2, per_target=30, sweep=2)
    assert budget.allow("eve", "carol", 0.0)
    assert not budget.allow("eve", "carol", 1.0)  # one per peer a minute
    assert budget.allow("eve", "dave", 2.0)
    for i in range(1000):  # a flood of refused claims with new names leaves no record
        assert not budget.allow("eve", f"nobody-{i}", 3.0)
    assert set(budget._by_target) == {"carol", "dave"}
    assert budget.allow("eve", "frank", 61.0)  # the minute has passed
    for i in range(10):  # (the sweeps come as records are added, amortized)
        assert budget.allow(f"r{i}", f"t{i}", 63.0)
    assert "carol" not in budget._by_target and "dave" not in budget._by_target
    assert len(budget._by_requester["eve"]) == 1
