"""The backend contract (agentmesh.backend), written once and run against every backend.

A new backend proves itself by adding a ``Deployment`` to ``DEPLOYMENTS``: something that
runs the real servers on 127.0.0.1, makes unregistered backends for them, and can kill and
restart them keeping their durable state. Every test talks to the backend only through the
``Backend`` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh.backend import Backend, Delivery
from agentmesh.crypto import AgentKeyPair, GroupSession, perform_key_exchange
from agentmesh.errors import HubError
from agentmesh.fanout import address
from agentmesh.testing import HubProcess

TIMEOUT = 30.0


class HubDeployment:
    """The network hub (one process) and its client, ``HubClient``."""

    name = "hub"
    #: whether an id whose holder has gone and for which nothing is queued may take a new key
    releases_unheld_ids = False

    def __init__(self, tmp: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.process = HubProcess(tmp / "hub.sqlite3", extra_args=extra_args).start()

    def new_backend(self) -> Backend:
        from agentmesh.hub_client import HubClient

        return HubClient("127.0.0.1", self.process.port, connect_timeout=5.0)

    def crash_and_restart(self) -> None:
        self.process.kill()
        self.process.restart()

    def close(self) -> None:
        self.process.stop()


class SharedHubDeployment(HubDeployment):
    """The network hub with every client's agent on a channel of one shared connection (the
    way a NetworkHub's agents connect): each must behave exactly as on a connection of its
    own, through the hub's crashes too."""

    name = "hub-channels"

    def __init__(self, tmp: Path, extra_args: tuple[str, ...] = ()) -> None:
        from agentmesh.hub_client.channels import CarrierPool

        super().__init__(tmp, extra_args)
        self.carriers = CarrierPool("127.0.0.1", self.process.port, None, 5.0, first_alone=False)

    def new_backend(self) -> Backend:
        from agentmesh.hub_client import HubClient

        return HubClient(
            "127.0.0.1", self.process.port, connect_timeout=5.0, carriers=self.carriers
        )


class LocalDeployment:
    """The in-process hub's directory and its backend, ``LocalBackend``. Its state is this
    process's memory: there is no server to crash and no connection to lose, so the tests of
    crashes and reconnects do not apply (they are skipped, saying so)."""

    name = "local"
    releases_unheld_ids = True  # so that a test or notebook can play a lost key (documented)

    def __init__(self, tmp: Path, extra_args: tuple[str, ...] = ()) -> None:
        from agentmesh.hub.limits import HubLimits
        from agentmesh.local_backend import LocalDirectory

        limits = HubLimits()
        if extra_args[:1] == ("--max-queued",):
            limits = HubLimits(max_queued_per_agent=int(extra_args[1]))
        self.directory = LocalDirectory(limits)

    def new_backend(self) -> Backend:
        from agentmesh.local_backend import LocalBackend

        return LocalBackend(self.directory)

    def crash_and_restart(self) -> None:
        pytest.skip("in-process backend: nothing to crash, no connection to lose")

    def close(self) -> None:
        return None


class NatsDeployment:
    """A NATS JetStream cluster of ``nodes`` real nats-servers and ``NatsBackend``."""

    nodes = 1
    releases_unheld_ids = False  # (directory keys are never deleted)

    def __init__(self, tmp: Path, extra_args: tuple[str, ...] = ()) -> None:
        from agentmesh.nats_cluster import NatsCluster
        from agentmesh.nats_setup import NatsSettings

        args = dict(zip(extra_args[::2], extra_args[1::2], strict=True))
        self.settings = NatsSettings(max_queued_per_agent=int(args.get("--max-queued", 100_000)))
        self.cluster = NatsCluster(tmp / "nats", nodes=self.nodes).start()

    def new_backend(self) -> Backend:
        from agentmesh.nats_backend import NatsBackend

        return NatsBackend(
            self.cluster.urls, settings=self.settings, connect_timeout=5.0, request_timeout=30.0
        )

    def crash_and_restart(self) -> None:
        from natsutil import stream_leader

        for node in self.cluster.nodes:
            node.kill()
        self.cluster.start()
        layout = self.settings.layout
        for stream in (
            layout.stream,
            f"KV_{layout.directory_bucket}",
            f"KV_{layout.prekey_bucket}",
        ):
            stream_leader(self.cluster.urls, stream)  # (elected: the cluster is back)

    def close(self) -> None:
        self.cluster.stop()


class NatsClusterDeployment(NatsDeployment):
    nodes = 3


DEPLOYMENTS: dict[str, Callable[..., Any]] = {
    "hub": HubDeployment,
    "hub-channels": SharedHubDeployment,
    "local": LocalDeployment,
}
if importlib.util.find_spec("nats") is not None:  # (nats-py: in the dev extra)
    DEPLOYMENTS.update(nats=NatsDeployment, nats3=NatsClusterDeployment)


def needs_a_crash(deployment: Any) -> None:
    """Skip (saying why) where the deployment has no servers to crash."""
    if isinstance(deployment, LocalDeployment):
        pytest.skip("in-process backend: its state lives and dies with the process")


@pytest.fixture(params=sorted(DEPLOYMENTS))
def deploy(request, tmp_path) -> Iterator[Callable[..., Any]]:
    """Starts the deployment under test (with optional per-recipient queue limit)."""
    made: list[Any] = []

    def start(max_queued: int | None = None) -> Any:
        args = ("--max-queued", str(max_queued)) if max_queued else ()
        deployment = DEPLOYMENTS[request.param](tmp_path, args)
        made.append(deployment)
        return deployment

    yield start
    for deployment in made:
        deployment.close()


class Receiver:
    """An ``on_batch`` that records deliveries; ``durable`` decides the acknowledgement."""

    def __init__(self, acknowledge: bool = True) -> None:
        self.acknowledge = acknowledge
        self.deliveries: list[Delivery] = []
        self.changed = asyncio.Event()

    async def __call__(self, batch: list[Delivery]) -> asyncio.Future[None] | None:
        self.deliveries.extend(batch)
        self.changed.set()
        if self.acknowledge:
            return None
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        never.set_exception(RuntimeError("not durable"))  # no acknowledgement
        return never

    async def wait_for(self, count: int) -> None:
        async def enough() -> None:
            while len(self.deliveries) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(enough(), TIMEOUT)


@contextlib.asynccontextmanager
async def registered(
    deployment: Any, keypair: Any, on_batch: Any = None, **kwargs: Any
) -> AsyncIterator[Backend]:
    backend = deployment.new_backend()
    await backend.register(keypair, on_batch=on_batch or Receiver(), **kwargs)
    try:
        yield backend
    finally:
        await backend.close(timeout=5.0)


def sealed(sender: Any, recipient: Any, count: int) -> list[bytes]:
    session = perform_key_exchange(sender, recipient.public_bundle())
    return [bytes(session.seal({"n": i}).to_bytes()) for i in range(count)]


async def send_all(backend: Backend, recipient: str, envelopes: list[bytes]) -> None:
    for envelope in envelopes:
        while not backend.send_nowait(recipient, envelope):
            backend.push()
            await backend.wait_for_room()
    backend.push()
    await backend.flush(TIMEOUT)


async def queue_while_offline(
    deployment: Any, sender: Any, recipient: Any, count: int
) -> list[bytes]:
    """The recipient registers once (so it is known), then is offline while ``count`` sealed
    envelopes are sent to it and flushed; returns them."""
    async with registered(deployment, recipient):
        pass
    envelopes = sealed(sender, recipient, count)
    async with registered(deployment, sender) as backend:
        await send_all(backend, recipient.agent_id, envelopes)
    return envelopes


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 3 * TIMEOUT))


# -- registration and the directory ------------------------------------------------------------


def test_an_id_is_bound_to_the_first_identity_key_that_registers_it(deploy):
    deployment = deploy()
    first, impostor = AgentKeyPair.generate("bob"), AgentKeyPair.generate("bob")

    async def main() -> None:
        async with registered(deployment, first):
            with pytest.raises(HubError, match="another identity key"):
                async with registered(deployment, impostor):
                    pass
        async with registered(deployment, first):  # the owner comes back
            pass
        if not deployment.releases_unheld_ids:
            with pytest.raises(HubError, match="another identity key"):
                async with registered(deployment, impostor):
                    pass

    run(main())


def test_bundles_are_served_and_unknown_ids_are_none(deploy):
    deployment = deploy()
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        async with registered(deployment, alice) as a, registered(deployment, bob):
            bundle = await a.get_bundle("bob")
            assert bundle is not None
            assert bundle["identity_key"] == bob.public_bundle()["identity_key"]
            assert await a.get_bundle("nobody") is None
            assert {"alice", "bob"} <= set(await a.list_agents())

    run(main())


def test_a_one_time_prekey_is_claimed_once(deploy):
    deployment = deploy()
    bob = AgentKeyPair.generate("bob")
    claimers = [AgentKeyPair.generate(f"c{i}") for i in range(4)]

    async def main() -> None:
        async with registered(deployment, bob) as b:
            assert await b.add_prekeys(bob.generate_one_time_prekeys(3)) == 3
        claimed = []
        for kp in claimers:
            async with registered(deployment, kp) as c:
                bundle = await c.claim_bundle("bob")
                assert bundle is not None
                if bundle.get("one_time_prekey") is not None:
                    claimed.append(bundle["one_time_prekey"]["id"])
        assert len(claimed) == 3 and len(set(claimed)) == 3, claimed

    run(main())


def test_every_reconnect_registers_again(deploy):
    deployment = deploy()
    needs_a_crash(deployment)
    bob = AgentKeyPair.generate("bob")

    async def main() -> None:
        async with registered(deployment, bob) as b:
            count = 0
            again = asyncio.Event()

            def on_registered() -> None:
                nonlocal count
                count += 1
                again.set()

            b.on_registered = on_registered
            await asyncio.get_running_loop().run_in_executor(None, deployment.crash_and_restart)
            await asyncio.wait_for(again.wait(), TIMEOUT)
            assert count >= 1
            assert await b.get_bundle("bob") is not None

    run(main())


# -- sending and delivery -----------------------------------------------------------------------


def test_a_send_to_an_unknown_agent_is_refused_naming_it(deploy):
    deployment = deploy()
    alice, ghost = AgentKeyPair.generate("alice"), AgentKeyPair.generate("ghost")

    async def main() -> None:
        async with registered(deployment, alice) as a:
            with pytest.raises(HubError, match="ghost"):
                await send_all(a, "ghost", sealed(alice, ghost, 1))

    run(main())


def test_a_full_inbox_is_refused_naming_the_recipient(deploy):
    deployment = deploy(max_queued=5)
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        async with registered(deployment, bob):
            pass  # known, and offline: everything queues
        async with registered(deployment, alice) as a:
            await send_all(a, "bob", sealed(alice, bob, 5))
            with pytest.raises(HubError, match="bob"):
                await send_all(a, "bob", sealed(alice, bob, 1))

    run(main())


def test_deliveries_keep_each_senders_order_with_rising_positions(deploy):
    deployment = deploy()
    alice, carol, bob = (AgentKeyPair.generate(n) for n in ("alice", "carol", "bob"))

    async def main() -> None:
        got = Receiver()
        async with (
            registered(deployment, bob, got),
            registered(deployment, alice) as a,
            registered(deployment, carol) as c,
        ):
            from_alice, from_carol = sealed(alice, bob, 60), sealed(carol, bob, 60)
            await asyncio.gather(send_all(a, "bob", from_alice), send_all(c, "bob", from_carol))
            await got.wait_for(120)
        positions = [position for position, _ in got.deliveries]
        assert positions == sorted(positions) and len(set(positions)) == 120
        data = [envelope for _, envelope in got.deliveries]
        assert [d for d in data if d in from_alice] == from_alice
        assert [d for d in data if d in from_carol] == from_carol

    run(main())


def test_pace_is_awaited_between_batches_and_what_came_meanwhile_follows_in_one(deploy):
    """``pace(size)`` is called once a batch is handed over; until what it returns is done,
    nothing newer is handed over; then what arrived meanwhile comes in one batch."""
    deployment = deploy()
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        got = Receiver()
        batches: list[int] = []
        sizes: list[int] = []
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_batch(batch: list[Delivery]) -> Any:
            batches.append(len(batch))
            return await got(batch)

        def pace(size: int) -> Any:
            sizes.append(size)
            return gate if len(sizes) == 1 else None

        envelopes = sealed(alice, bob, 11)
        async with (
            registered(deployment, bob, on_batch, pace=pace),
            registered(deployment, alice) as a,
        ):
            await send_all(a, "bob", envelopes[:1])
            await got.wait_for(1)
            await send_all(a, "bob", envelopes[1:])
            await asyncio.sleep(0.5)
            assert batches == [1] and sizes == [1]  # (held back while the pace runs)
            gate.set_result(None)
            await got.wait_for(11)
        assert batches == [1, 10] and sizes[:2] == [1, 10]
        assert [e for _, e in got.deliveries] == envelopes

    run(main())


def test_an_unacknowledged_batch_comes_again_and_an_acknowledged_one_does_not(deploy):
    deployment = deploy()
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        envelopes = await queue_while_offline(deployment, alice, bob, 10)
        first = Receiver(acknowledge=False)  # its work never becomes durable
        async with registered(deployment, bob, first):
            await first.wait_for(10)
        second = Receiver()
        async with registered(deployment, bob, second):
            await second.wait_for(10)
            assert [e for _, e in second.deliveries] == envelopes
            assert second.deliveries == first.deliveries  # same positions: the same deliveries
        third = Receiver()
        async with registered(deployment, bob, third) as b:
            await b.get_bundle("bob")  # (a round trip: anything queued would have come first)
            await asyncio.sleep(0.5)
        assert third.deliveries == []

    run(main())


def test_a_batch_never_made_durable_comes_again_to_the_same_backend(deploy):
    """A batch whose durable future fails is not acknowledged; when the same backend
    reconnects (here after a crash of the servers), it is handed over again, not skipped as
    already handled."""
    deployment = deploy()
    needs_a_crash(deployment)
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        envelopes = await queue_while_offline(deployment, alice, bob, 5)
        failing = {"on": True}
        got = Receiver()

        async def on_batch(batch: list[Delivery]) -> Any:
            await got(batch)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if failing["on"]:
                future.set_exception(RuntimeError("the disk is full"))
            else:
                future.set_result(None)
            return future

        async with registered(deployment, bob, on_batch):
            await got.wait_for(5)
            failing["on"] = False
            await asyncio.get_running_loop().run_in_executor(None, deployment.crash_and_restart)
            await got.wait_for(10)
        assert [e for _, e in got.deliveries] == envelopes + envelopes
        after = Receiver()
        async with registered(deployment, bob, after) as b:
            await b.get_bundle("bob")
            await asyncio.sleep(0.5)
        assert after.deliveries == []  # acknowledged the second time

    run(main())


def test_positions_already_handled_are_skipped(deploy):
    deployment = deploy()
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        await queue_while_offline(deployment, alice, bob, 6)
        first = Receiver(acknowledge=False)
        backend = deployment.new_backend()
        stores: list[bytes | None] = []

        async def on_batch(batch: list[Delivery]) -> Any:
            stores.append(backend.delivery_hub_id)  # (told while the batch is handled)
            return await first(batch)

        await backend.register(bob, on_batch=on_batch)
        await first.wait_for(6)
        await backend.close(timeout=5.0)
        assert stores and stores[0] is not None
        # a restarted agent saved that it handled the first three: only the rest comes
        rest = Receiver()
        async with registered(deployment, bob, rest, handled={stores[0]: first.deliveries[2][0]}):
            await rest.wait_for(3)
            await asyncio.sleep(0.3)
        assert rest.deliveries == first.deliveries[3:]

    run(main())


def test_a_flushed_envelope_survives_a_crash(deploy):
    deployment = deploy()
    needs_a_crash(deployment)
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")

    async def main() -> None:
        envelopes = await queue_while_offline(deployment, alice, bob, 20)
        await asyncio.get_running_loop().run_in_executor(None, deployment.crash_and_restart)
        got = Receiver()
        async with registered(deployment, bob, got):
            await got.wait_for(20)
        assert [e for _, e in got.deliveries] == envelopes

    run(main())


# -- group messages: one upload, a copy for each recipient --------------------------------------


def group_messages(sender: Any, count: int) -> list[bytes]:
    """``count`` group messages of ``sender`` in their unaddressed form (what is uploaded)."""
    session = GroupSession(sender, "team")
    session.distribution()
    return [bytes(session.seal({"n": i}).to_unaddressed_bytes()) for i in range(count)]


def copy_for(message: bytes, member: str) -> bytes:
    return bytes(address(message, member))


async def send_group_all(backend: Backend, recipients: list[str], messages: list[bytes]) -> None:
    for message in messages:
        while not backend.send_group_nowait(recipients, message):
            backend.push()
            await backend.wait_for_room()
    backend.push()
    await backend.flush(TIMEOUT)


def test_a_group_message_uploaded_once_reaches_every_recipient_online_or_not(deploy):
    """Flushed means durable for every member: one online member gets its copy at once, the
    offline ones when they come (each copy addressed to its member)."""
    deployment = deploy()
    alice = AgentKeyPair.generate("alice")
    members = [AgentKeyPair.generate(f"m{i}") for i in range(5)]
    names = [m.agent_id for m in members]

    async def main() -> None:
        for member in members[1:]:
            async with registered(deployment, member):
                pass  # known, then offline
        messages = group_messages(alice, 3)
        online = Receiver()
        async with registered(deployment, members[0], online):
            async with registered(deployment, alice) as a:
                await send_group_all(a, names, messages)
            await online.wait_for(3)
        assert [e for _, e in online.deliveries] == [copy_for(m, "m0") for m in messages]
        for member in members[1:]:
            got = Receiver()
            async with registered(deployment, member, got):
                await got.wait_for(3)
            assert [e for _, e in got.deliveries] == [
                copy_for(m, member.agent_id) for m in messages
            ]

    run(main())


def test_a_member_refused_is_named_and_the_others_still_get_their_copy(deploy):
    """An unknown member and a member whose inbox is full are reported by flush, naming
    them; the upload is not refused as a whole: every other member's copy is stored."""
    deployment = deploy(max_queued=2)
    alice, bob, carol = (AgentKeyPair.generate(n) for n in ("alice", "bob", "carol"))

    async def main() -> None:
        for member in (bob, carol):
            async with registered(deployment, member):
                pass
        message = group_messages(alice, 1)[0]
        async with registered(deployment, alice) as a:
            await send_all(a, "carol", sealed(alice, carol, 2))  # carol's inbox is full now
            with pytest.raises(HubError, match=r"ghost|carol") as refused:
                await send_group_all(a, ["bob", "ghost", "carol"], [message])
            names = {getattr(refused.value, "recipient", None)}
            with contextlib.suppress(HubError):  # (a backend may report the second refusal)
                await a.flush(TIMEOUT)
        got = Receiver()
        async with registered(deployment, bob, got):
            await got.wait_for(1)
        assert [e for _, e in got.deliveries] == [copy_for(message, "bob")]
        assert names <= {"ghost", "carol"}

    run(main())


def test_a_senders_order_holds_across_its_group_and_pairwise_envelopes(deploy):
    deployment = deploy()
    alice, bob, carol = (AgentKeyPair.generate(n) for n in ("alice", "bob", "carol"))

    async def main() -> None:
        got = Receiver()
        async with registered(deployment, carol), registered(deployment, bob, got):
            pairwise = sealed(alice, bob, 20)
            groups = group_messages(alice, 10)
            expected: list[bytes] = []
            async with registered(deployment, alice) as a:
                for i in range(10):
                    for envelope in pairwise[2 * i : 2 * i + 2]:
                        while not a.send_nowait("bob", envelope):
                            await a.wait_for_room()
                    while not a.send_group_nowait(["carol", "bob"], groups[i]):
                        await a.wait_for_room()
                    expected += [*pairwise[2 * i : 2 * i + 2], copy_for(groups[i], "bob")]
                a.push()
                await a.flush(TIMEOUT)
                await got.wait_for(30)
        assert [e for _, e in got.deliveries] == expected
        positions = [position for position, _ in got.deliveries]
        assert positions == sorted(positions)

    run(main())


def test_a_flushed_group_message_survives_a_crash(deploy):
    deployment = deploy()
    needs_a_crash(deployment)
    alice, bob, carol = (AgentKeyPair.generate(n) for n in ("alice", "bob", "carol"))

    async def main() -> None:
        for member in (bob, carol):
            async with registered(deployment, member):
                pass
        messages = group_messages(alice, 5)
        async with registered(deployment, alice) as a:
            await send_group_all(a, ["bob", "carol"], messages)
        await asyncio.get_running_loop().run_in_executor(None, deployment.crash_and_restart)
        for member in ("bob", "carol"):
            got = Receiver()
            async with registered(deployment, {"bob": bob, "carol": carol}[member], got):
                await got.wait_for(5)
            assert [e for _, e in got.deliveries] == [copy_for(m, member) for m in messages]

    run(main())


def test_a_fan_out_naming_no_one_or_someone_twice_is_refused_before_anything_is_sent(deploy):
    deployment = deploy()
    alice = AgentKeyPair.generate("alice")

    async def main() -> None:
        message = group_messages(alice, 1)[0]
        async with registered(deployment, alice) as a:
            with pytest.raises(ValueError, match=r"1\.\.1000 recipients"):
                a.send_group_nowait([], message)
            with pytest.raises(ValueError, match="twice"):
                a.send_group_nowait(["bob", "bob"], message)
            with pytest.raises(HubError, match="group message"):
                a.send_group_nowait(["bob"], sealed(alice, AgentKeyPair.generate("bob"), 1)[0])
                await a.flush(TIMEOUT)

    run(main())


def test_a_group_message_in_flight_during_a_crash_reaches_each_member_in_order(deploy):
    """Uploads not yet acknowledged when the servers die are sent again after the reconnect;
    every member gets every copy, in order (a resend of one stored already is not stored twice
    where the backend can tell: positions never repeat)."""
    deployment = deploy()
    needs_a_crash(deployment)
    alice, bob, carol = (AgentKeyPair.generate(n) for n in ("alice", "bob", "carol"))

    async def main() -> None:
        for member in (bob, carol):
            async with registered(deployment, member):
                pass
        messages = group_messages(alice, 10)
        async with registered(deployment, alice) as a:
            for message in messages:
                while not a.send_group_nowait(["bob", "carol"], message):
                    await a.wait_for_room()
            a.push()
            await asyncio.get_running_loop().run_in_executor(None, deployment.crash_and_restart)
            await a.flush(TIMEOUT)
        for member in (bob, carol):
            got = Receiver()
            async with registered(deployment, member, got):
                await got.wait_for(10)
                await asyncio.sleep(0.3)
            copies = [copy_for(m, member.agent_id) for m in messages]
            seen = [e for _, e in got.deliveries]
            assert list(dict.fromkeys(seen)) == copies
            positions = [p for p, _ in got.deliveries]
            assert positions == sorted(set(positions))

    run(main())
