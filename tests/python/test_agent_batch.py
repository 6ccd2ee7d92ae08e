"""Batched receiving: ``_AgentCore.receive_batch`` and the NetworkHub's batch delivery path.

A network agent gets its deliveries in batches (``HubClient.register(on_batch=...)``): one
hand-off to its worker per batch, each sender's run unsealed together (``unseal_many``, batch
signature verification), handlers in arrival order, one state write per batch before the ack.
These tests pin down that nothing of the per-message guarantees is lost on the way, and the
``deniable=True`` agent option.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from hubutil import eventually

from agentmesh import Agent, LocalHub
from agentmesh.agent import UNSEAL_MANY_MAX
from agentmesh.crypto import Envelope
from agentmesh.errors import (
    AuthenticationError,
    CryptoError,
    FormatError,
    IdentityError,
    ReplayError,
    SignatureError,
    UnknownSenderError,
)
from agentmesh.hub_client import delivery as hub_client_delivery
from agentmesh.hubs import NetworkHub


class Recorder:
    def __init__(self, agent) -> None:
        self.messages: list = []
        self.errors: list = []
        self.order: list = []
        agent.on_message(self._msg)
        agent.on_error(self._err)

    def _msg(self, msg) -> None:
        self.messages.append(msg)
        self.order.append(("msg", msg.sender, msg.text))

    def _err(self, exc) -> None:
        self.errors.append(exc)
        self.order.append(("err", getattr(exc, "sender", None), type(exc).__name__))


class CountingSession:
    """Wraps a CryptoSession to count the unseal calls the core makes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.single = 0
        self.many: list[int] = []

    @property
    def deniable(self) -> bool:
        return self.inner.deniable

    def unseal(self, env):
        self.single += 1
        return self.inner.unseal(env)

    def unseal_many(self, envs):
        self.many.append(len(envs))
        return self.inner.unseal_many(envs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _local(*names: str, deniable: bool = False):
    hub = LocalHub()
    agents = [Agent(name, hub=hub, deniable=deniable) for name in names]
    return hub, agents


def _seal(sender: Agent, to: str, text: str, **extra) -> Envelope:
    """Seal without delivering (the envelope a hub would carry)."""
    return sender._core.seal_for(to, {"text": text, **extra})


# -- the core: receive_batch ------------------------------------------------------------------


def test_batch_keeps_arrival_order_and_returns_one_result_per_envelope():
    _hub, (alice, carol, bob) = _local("alice", "carol", "bob")
    rec = Recorder(bob)
    alice.send("bob", text="hello")  # sessions exist (LocalHub delivered these)
    carol.send("bob", text="hello")
    envs = []
    for i in range(6):
        envs.append(_seal(alice, "bob", f"a{i}"))
        if i % 2:
            envs.append(_seal(carol, "bob", f"c{i}"))
    results = bob._core.receive_batch(envs)
    expected = ["a0", "a1", "c1", "a2", "a3", "c3", "a4", "a5", "c5"]
    assert [m.text for m in rec.messages[2:]] == expected  # handlers ran in arrival order
    assert [m.text for m in results] == expected
    assert [m.id for m in results] == [e.id for e in envs]
    assert bob.status()["received"] == 2 + len(envs) and bob.status()["rejected"] == 0


def test_signed_runs_use_unseal_many_and_deniable_or_single_envelopes_do_not():
    for deniable in (False, True):
        _hub, (alice, carol, bob) = _local("alice", "carol", "bob", deniable=deniable)
        rec = Recorder(bob)
        alice.send("bob", text="x")
        carol.send("bob", text="x")
        spy_a = bob._core._sessions["alice"] = CountingSession(bob._core._sessions["alice"])
        spy_c = bob._core._sessions["carol"] = CountingSession(bob._core._sessions["carol"])
        n = UNSEAL_MANY_MAX + 10  # more than one chunk
        envs = [_seal(alice, "bob", f"a{i}") for i in range(n)] + [_seal(carol, "bob", "c")]
        bob._core.receive_batch(envs)
        assert len(rec.messages) == 2 + n + 1 and not rec.errors
        if deniable:
            assert spy_a.many == [] and spy_a.single == n
        else:
            assert spy_a.many == [UNSEAL_MANY_MAX, n - UNSEAL_MANY_MAX] and spy_a.single == 0
        assert spy_c.many == [] and spy_c.single == 1  # a run of one: no batch call
        before = (list(spy_a.many), spy_a.single)
        assert bob._core.receive_batch([_seal(alice, "bob", "alone")])[0].text == "alone"
        assert (spy_a.many, spy_a.single) == (before[0], before[1] + 1)  # a batch of one


def test_rejections_in_a_batch_are_reported_in_place_and_change_nothing():
    hub, (alice, carol, bob) = _local("alice", "carol", "bob")
    dave = Agent("dave", hub=hub)
    rec = Recorder(bob)
    alice.send("bob", text="hello")
    old = _seal(alice, "bob", "old")
    bob._core.receive_batch([old])
    good = [_seal(alice, "bob", f"g{i}") for i in range(4)]
    tampered = bytearray(_seal(alice, "bob", "evil").to_bytes())
    tampered[-3] ^= 0x40
    for_someone_else = _seal(alice, "dave", "not for bob")
    first_contact = _seal(carol, "bob", "hi from carol")  # bob has no session with carol yet
    stranger = Agent("stranger")  # on no hub: bob cannot find its bundle
    stranger.connect_with_bundle(bob.public_bundle)
    unknown = stranger.send("bob", text="who am I")
    batch = [
        good[0],
        bytes(tampered),
        old,  # replayed
        good[1],
        b"\x00garbage",
        for_someone_else,
        first_contact,
        good[2],
        unknown,
        good[3],
    ]
    results = bob._core.receive_batch(batch)
    assert [r is not None for r in results] == [
        True, False, False, True, False, False, True, True, False, True,
    ]  # fmt: skip
    assert [m.text for m in rec.messages[2:]] == ["g0", "g1", "hi from carol", "g2", "g3"]
    kinds = [type(e) for e in rec.errors]
    assert issubclass(kinds[0], (AuthenticationError, SignatureError))
    assert issubclass(kinds[1], ReplayError)
    assert issubclass(kinds[2], FormatError)
    assert issubclass(kinds[3], IdentityError)
    assert issubclass(kinds[4], UnknownSenderError)
    assert all(isinstance(e, CryptoError) for e in rec.errors)
    # in arrival order, messages and rejections interleaved as delivered
    assert [kind for kind, *_ in rec.order[2:]] == [
        "msg", "err", "err", "msg", "err", "err", "msg", "msg", "err", "msg",
    ]  # fmt: skip
    assert rec.errors[0].sender == "alice" and rec.errors[0].envelope is not None
    assert bob.status()["rejected"] == 5
    assert "carol" in bob.status()["active_sessions"]
    # the rejected envelopes left the session as it was: the next message still opens
    assert bob._core.receive_batch([_seal(alice, "bob", "after")])[0].text == "after"
    del dave


def test_first_contact_runs_and_batch_equals_one_by_one():
    """A sender's whole first run (prekey messages) in one batch; same result as one by one."""
    _hub, (alice, carol, bob, bob2) = _local("alice", "carol", "bob", "bob2")
    rec, rec2 = Recorder(bob), Recorder(bob2)
    batch1, batch2 = [], []
    for i in range(5):
        batch1.append(_seal(alice, "bob", f"a{i}"))
        batch1.append(_seal(carol, "bob", f"c{i}"))
        batch2.append(_seal(alice, "bob2", f"a{i}"))
        batch2.append(_seal(carol, "bob2", f"c{i}"))
    bob._core.receive_batch(batch1)
    for env in batch2:
        bob2.receive(env)
    assert [m.text for m in rec.messages] == [m.text for m in rec2.messages]
    assert len(rec.messages) == 10 and not rec.errors and not rec2.errors
    assert bob.status()["known_peers"] == ["alice", "carol"]
    # the sessions continue in both directions
    bob.send("alice", text="back")
    assert bob._core.receive_batch([_seal(alice, "bob", "again")])[0].text == "again"


def test_handlers_may_reply_during_a_batch():
    _hub, (alice, bob) = _local("alice", "bob")
    replies: list = []
    alice.on_message(replies.append)
    alice.send("bob", text="hello")

    @bob.on_message
    def reply(msg):
        bob.send(msg.sender, text="re:" + msg.text)

    envs = [_seal(alice, "bob", f"m{i}") for i in range(5)]
    bob._core.receive_batch(envs)
    assert [m.text for m in replies] == [f"re:m{i}" for i in range(5)]


# -- deniable agents ---------------------------------------------------------------------------


def test_deniable_agents_talk_and_say_so():
    _hub, (alice, bob) = _local("alice", "bob", deniable=True)
    got: list = []
    bob.on_message(got.append)
    alice.send("bob", text="off the record")
    bob.send("alice", text="likewise")
    assert [m.text for m in got] == ["off the record"]
    assert alice.deniable and bob.deniable
    assert alice.status()["deniable"] is True
    assert alice._core._sessions["bob"].deniable and bob._core._sessions["alice"].deniable
    signed = Agent("carol")
    assert signed.deniable is False and signed.status()["deniable"] is False
    with pytest.raises(TypeError, match="deniable must be a bool"):
        Agent("dave", deniable="yes")


def test_a_signed_agent_refuses_deniable_messages():
    hub = LocalHub()
    alice = Agent("alice", hub=hub, deniable=True)
    bob = Agent("bob", hub=hub)  # signed
    rec = Recorder(bob)
    alice.send("bob", text="deniable hello")
    assert rec.messages == [] and len(rec.errors) == 1
    assert isinstance(rec.errors[0], CryptoError)
    assert "alice" not in bob.status()["active_sessions"]  # nothing kept


# -- over a network hub ------------------------------------------------------------------------


@pytest.fixture
def server():
    from agentmesh.hub_server import NetworkHubServer

    srv = NetworkHubServer("127.0.0.1", 0)
    srv.start(block=False)
    yield srv
    srv.stop()


def test_network_bursts_arrive_once_in_order_per_sender_in_batches(server, monkeypatch):
    net = NetworkHub("127.0.0.1", server.port)
    bob = Agent("bob", hub=net)
    alice, carol = Agent("alice", hub=net), Agent("carol", hub=net)
    sizes: list[int] = []
    real = bob._core.receive_batch

    def spy(envs, *args, **kwargs):
        sizes.append(len(envs))
        return real(envs, *args, **kwargs)

    monkeypatch.setattr(bob._core, "receive_batch", spy)
    gate = threading.Event()
    got: list = []

    @bob.on_message
    def first_waits(msg):
        gate.wait(10)  # the first delivery holds the worker; the rest piles up meanwhile
        got.append((msg.sender, msg.payload["n"]))

    n = 300
    for i in range(n):
        alice.send("bob", text="a", n=i)
        carol.send("bob", text="c", n=i)
    alice.flush(30)
    carol.flush(30)
    time.sleep(0.2)
    gate.set()
    assert eventually(lambda: len(got) >= 2 * n), f"got {len(got)} of {2 * n}"
    time.sleep(0.1)
    assert len(got) == 2 * n  # exactly once
    assert [k for s, k in got if s == "alice"] == list(range(n))
    assert [k for s, k in got if s == "carol"] == list(range(n))
    assert max(sizes) > 1 and sum(sizes) == 2 * n
    assert bob.status()["received"] == 2 * n and bob.status()["rejected"] == 0
    for agent in (alice, carol, bob):
        agent.close()
    net.close()


def test_network_tampered_envelope_in_a_burst_is_rejected_in_place(server):
    net = NetworkHub("127.0.0.1", server.port)
    alice, bob = Agent("alice", hub=net), Agent("bob", hub=net)
    rec = Recorder(bob)
    for i in range(20):
        alice.send("bob", text=f"m{i}")
    raw = bytearray(_seal(alice, "bob", "evil").to_bytes())
    raw[-2] ^= 0x01
    alice._core._transmit(Envelope.from_bytes(bytes(raw)))
    for i in range(20, 40):
        alice.send("bob", text=f"m{i}")
    alice.flush(30)
    assert eventually(lambda: len(rec.messages) >= 40 and rec.errors)
    assert [m.text for m in rec.messages] == [f"m{i}" for i in range(40)]
    assert len(rec.errors) == 1 and isinstance(rec.errors[0], CryptoError)
    assert rec.order.index(("err", "alice", type(rec.errors[0]).__name__)) == 20
    alice.close()
    bob.close()
    net.close()


def test_network_persistent_receiver_saves_once_per_batch_before_the_ack(
    server, tmp_path, monkeypatch
):
    events: list[str] = []
    real_ack_all = hub_client_delivery._ack_all

    def ack_all(acks):
        events.append("ack")
        real_ack_all(acks)

    monkeypatch.setattr(hub_client_delivery, "_ack_all", ack_all)
    net = NetworkHub("127.0.0.1", server.port)
    bob = Agent("bob", hub=net, keypair_path=tmp_path / "bob.key")
    real_save = bob._core.save_state

    def save():
        events.append("save")
        real_save()

    monkeypatch.setattr(bob._core, "save_state", save)
    alice = Agent("alice", hub=net)
    got: list = []
    gate = threading.Event()

    @bob.on_message
    def handle(msg):
        gate.wait(10)
        got.append(msg.payload["n"])

    n = 200
    for i in range(n):
        alice.send("bob", text="x", n=i)
    alice.flush(30)
    time.sleep(0.2)
    gate.set()
    assert eventually(lambda: len(got) >= n)
    assert eventually(lambda: events.count("ack") >= 1 and events[-1] == "ack")
    assert got == list(range(n))
    saves = events.count("save")
    assert 1 <= saves < n / 4  # group commit: far fewer writes than messages
    # each batch: the state is written, then the batch is acknowledged
    assert re.fullmatch(r"(S+A+)+", "".join(e[0].upper() for e in events)), events
    fingerprint = bob.fingerprint
    bob.close()
    # the saved state has every accepted message: a restarted bob continues the session
    bob = Agent("bob", hub=net, keypair_path=tmp_path / "bob.key")
    assert bob.fingerprint == fingerprint
    again: list = []
    bob.on_message(again.append)
    alice.send("bob", text="after restart")
    assert eventually(lambda: again)
    assert [m.text for m in again] == ["after restart"]
    assert bob.status()["rejected"] == 0
    alice.close()
    bob.close()
    net.close()


def test_network_single_messages_do_not_wait_for_a_batch(server):
    net = NetworkHub("127.0.0.1", server.port)
    alice, bob = Agent("alice", hub=net), Agent("bob", hub=net)
    replies = threading.Event()

    @bob.on_message
    def echo(msg):
        bob.send(msg.sender, text=msg.text)

    alice.on_message(lambda _msg: replies.set())
    alice.connect("bob")
    worst = 0.0
    for i in range(30):
        replies.clear()
        t0 = time.perf_counter()
        alice.send("bob", text=f"ping{i}")
        assert replies.wait(10)
        worst = max(worst, time.perf_counter() - t0) if i >= 5 else 0.0
    # generous (a shared CI machine): a round trip is ~1 ms here; a batching delay of even
    # 100 ms per message would show
    assert worst < 1.0
    alice.close()
    bob.close()
    net.close()


def test_network_deniable_agents(server):
    net = NetworkHub("127.0.0.1", server.port)
    alice = Agent("alice", hub=net, deniable=True)
    bob = Agent("bob", hub=net, deniable=True)
    got: list = []
    bob.on_message(got.append)
    for i in range(50):
        alice.send("bob", text=f"d{i}")
    alice.flush(30)
    assert eventually(lambda: len(got) >= 50)
    assert [m.text for m in got] == [f"d{i}" for i in range(50)]
    assert bob._core._sessions["alice"].deniable
    alice.close()
    bob.close()
    net.close()


def test_network_handler_closing_its_agent_mid_batch_loses_and_repeats_nothing(server, tmp_path):
    """The batch in progress is finished and acknowledged; the rest waits at the hub for the
    restarted agent, which reports no replays: every message is handled exactly once."""
    net = NetworkHub("127.0.0.1", server.port)
    key = tmp_path / "bob.key"
    bob = Agent("bob", hub=net, keypair_path=key)
    alice = Agent("alice", hub=net)
    seen: list[int] = []
    errors: list = []
    gate = threading.Event()

    @bob.on_message
    def handle(msg):
        gate.wait(10)
        seen.append(msg.payload["n"])
        if len(seen) == 5:
            bob.close()

    bob.on_error(errors.append)
    n = 400  # more than one batch (at most 256): some are left for the restarted agent
    for i in range(n):
        alice.send("bob", text="x", n=i)
    alice.flush(30)
    time.sleep(0.2)
    gate.set()
    assert eventually(lambda: bob.closed and len(seen) >= 5)
    time.sleep(0.3)
    first = list(seen)
    assert first == list(range(len(first))) and 5 <= len(first) < n
    bob2 = Agent("bob", hub=net, keypair_path=key)
    bob2.on_error(errors.append)
    bob2.on_message(lambda msg: seen.append(msg.payload["n"]))
    assert eventually(lambda: len(seen) >= n), (len(first), len(seen))
    time.sleep(0.2)
    assert seen == list(range(n)) and not errors, (len(first), errors[:3])
    alice.close()
    bob2.close()
    net.close()
