"""Encrypted groups on a LocalHub: delivery, order, membership that really excludes, forged
changes refused, control messages kept from the handlers, persistence across a restart.
(The same on a real network hub: test_groups_network.py; the crypto's own properties:
rust/agentmesh-core/tests/groups.rs.)"""

from __future__ import annotations

import asyncio
import base64

import pytest

from agentmesh import Agent, AsyncAgent, LocalHub
from agentmesh import crypto as c
from agentmesh.agent_groups import GROUP_CONTROL_TYPE
from agentmesh.errors import (
    AuthenticationError,
    ReplayError,
    SignatureError,
)


class Team:
    """Agents on one LocalHub, recording what their handlers and error handlers got."""

    def __init__(self, *names: str, hub: LocalHub | None = None, tmp=None) -> None:
        self.hub = hub or LocalHub()
        self.agents: dict[str, Agent] = {}
        self.got: dict[str, list] = {}
        self.errors: dict[str, list] = {}
        for name in names:
            self.join(name, tmp)

    def join(self, name: str, tmp=None) -> Agent:
        path = None if tmp is None else tmp / f"{name}.key"
        agent = Agent(name, hub=self.hub, keypair_path=path)
        self.agents[name] = agent
        self.got.setdefault(name, [])
        self.errors.setdefault(name, [])
        agent.on_message(lambda m, n=name: self.got[n].append(m))
        agent.on_error(lambda e, n=name: self.errors[n].append(e))
        return agent

    def texts(self, name: str, group: str | None = "research") -> list[tuple[str, str]]:
        return [(m.sender, m.text) for m in self.got[name] if m.group == group]

    def __getitem__(self, name: str) -> Agent:
        return self.agents[name]


def test_every_member_receives_each_message_once_as_an_ordinary_message():
    t = Team("alice", "bob", "carol")
    group = t["alice"].create_group("research", members=["bob", "carol"])
    assert group.members == ["alice", "bob", "carol"]
    assert group.admin == "alice"
    assert [g.id for g in t["bob"].groups()] == ["research"]
    env = group.send(text="new plan", step=1)
    t["bob"].group("research").send_payload({"text": "ack", "type": "reply"})
    assert t.texts("bob") == [("alice", "new plan")]
    assert t.texts("carol") == [("alice", "new plan"), ("bob", "ack")]
    assert t.texts("alice") == [("bob", "ack")]
    msg = t.got["bob"][0]
    assert msg.group == "research" and msg.sender == "alice" and msg.recipient == "bob"
    assert msg.payload == {"text": "new plan", "step": 1}
    assert msg.id == env.id == t.got["carol"][0].id  # one sealed message for everybody
    assert t.got["carol"][1].type == "reply"
    # control messages (membership, sender keys) never reached a handler, nothing was rejected
    assert all(m.group is not None for name in t.got for m in t.got[name])
    assert not any(t.errors.values())
    # pairwise messages still carry group None
    t["alice"].send("bob", text="direct")
    assert t.texts("bob", group=None) == [("alice", "direct")]


def test_per_sender_order_holds():
    t = Team("alice", "bob", "carol")
    group = t["alice"].create_group("research", members=["bob", "carol"])
    bob_group = t["bob"].group("research")
    for i in range(20):
        group.send(text=f"a{i}")
        if i % 3 == 0:
            bob_group.send(text=f"b{i}")
    carol = t.texts("carol")
    assert [x for s, x in carol if s == "alice"] == [f"a{i}" for i in range(20)]
    assert [x for s, x in carol if s == "bob"] == [f"b{i}" for i in range(0, 20, 3)]


def test_a_removed_member_with_its_full_state_reads_nothing_after_the_removal(tmp_path):
    t = Team("alice", "bob", "carol", tmp=tmp_path)
    group = t["alice"].create_group("research", members=["bob", "carol"])
    group.send(text="before")
    t["bob"].group("research").send(text="bob before")
    # carol's complete state as of now: her group state (with every chain) and her identity
    carol = t["carol"]
    carol.flush()
    stolen = carol._core._groups["research"].session.export_state()
    group.remove("carol")
    assert group.members == ["alice", "bob"]
    assert t["carol"].groups() == []  # carol was told, and forgot the group
    sent = [group.send(text="after"), t["bob"].group("research").send(text="bob after")]
    assert t.texts("bob")[-1] == ("alice", "after")
    assert t.texts("alice")[-1] == ("bob", "bob after")
    assert ("alice", "after") not in t.texts("carol")
    # the stolen state opens none of it (alice's and bob's chains are new)
    thief = c.GroupSession.import_state(carol.keypair, stolen)
    for env in sent:
        wire = env.to_bytes_for("carol")
        with pytest.raises(AuthenticationError):
            thief.open(wire)


def test_a_late_joiner_reads_nothing_sent_before_it_joined():
    t = Team("alice", "bob", "dave")
    group = t["alice"].create_group("research", members=["bob"])
    early = [group.send(text=f"early {i}") for i in range(3)]
    t["bob"].group("research").send(text="bob early")
    group.add("dave")
    assert t["dave"].group("research").members == ["alice", "bob", "dave"]
    group.send(text="welcome")
    t["bob"].group("research").send(text="hi dave")
    assert t.texts("dave") == [("alice", "welcome"), ("bob", "hi dave")]
    # with its full state, dave opens none of the earlier messages
    session = t["dave"]._core._groups["research"].session
    for env in early:
        with pytest.raises((ReplayError, AuthenticationError)):
            session.open(env.to_bytes_for("dave"))


def test_a_membership_change_by_a_non_administrator_is_refused():
    t = Team("alice", "bob", "carol", "mallory")
    t["alice"].create_group("research", members=["bob", "carol", "mallory"])
    # mallory signs a record that drops carol and sends it as the administrator would
    record = c.sign_membership(t["mallory"].keypair, "research", 99, ["alice", "bob", "mallory"])
    t["mallory"].send_payload(
        "bob",
        {
            "type": GROUP_CONTROL_TYPE,
            "op": "membership",
            "group": "research",
            "record": base64.b64encode(record).decode(),
        },
    )
    assert t["bob"].group("research").members == ["alice", "bob", "carol", "mallory"]
    assert [type(e) for e in t.errors["bob"]] == [SignatureError]
    # and mallory's group face refuses too
    with pytest.raises(PermissionError):
        t["mallory"].group("research").remove("carol")
    # nothing of it reached a handler
    assert t.got["bob"] == []


def test_a_member_cannot_forge_a_message_as_another_member():
    t = Team("alice", "bob", "mallory")
    t["alice"].create_group("research", members=["bob", "mallory"])
    t["alice"].group("research").send(text="real")
    # mallory holds alice's chain; her own group session can only seal as mallory. A message of
    # hers re-labelled as alice's fails (the sender is inside the associated data and signature).
    env = t["mallory"].group("research").send(text="from mallory")
    wire = bytearray(env.to_bytes_for("bob"))
    start = 5 + 1  # AM 01 03 01, then id(sender)
    assert wire[start : start + 7] == b"mallory"
    forged = bytes(wire[:5]) + bytes([5]) + b"alice" + bytes(wire[start + 7 :])
    before = len(t.got["bob"])
    t.hub.deliver(forged)
    # (alice has no such chain: the agent holds it back in case her sender key is on the way;
    # it never reaches a handler, and bob's group state refuses it outright)
    assert len(t.got["bob"]) == before
    with pytest.raises(AuthenticationError):
        t["bob"]._core._groups["research"].session.open(forged)
    assert [m.text for m in t.got["bob"]] == ["real", "from mallory"]


def test_replayed_and_tampered_group_messages_never_reach_a_handler():
    t = Team("alice", "bob")
    group = t["alice"].create_group("research", members=["bob"])
    env = group.send(text="once")
    wire = env.to_bytes_for("bob")
    t.hub.deliver(wire)  # replay
    assert isinstance(t.errors["bob"][-1], ReplayError)
    tampered = bytearray(group.send(text="twice").to_bytes_for("bob"))
    tampered[-1] ^= 1
    t.hub.deliver(bytes(tampered))
    assert t.texts("bob") == [("alice", "once"), ("alice", "twice")]
    assert len(t.errors["bob"]) == 2


def test_a_member_can_leave():
    t = Team("alice", "bob", "carol")
    group = t["alice"].create_group("research", members=["bob", "carol"])
    t["carol"].group("research").leave()
    assert t["carol"].groups() == []
    assert group.members == ["alice", "bob"]
    group.send(text="without carol")
    assert t.texts("carol") == []
    with pytest.raises(ValueError, match="creator cannot leave"):
        group.leave()


def test_control_payloads_are_reserved():
    t = Team("alice", "bob")
    group = t["alice"].create_group("research", members=["bob"])
    with pytest.raises(ValueError, match="reserved"):
        group.send_payload({"type": GROUP_CONTROL_TYPE})
    with pytest.raises(ValueError, match="already exists"):
        t["alice"].create_group("research", members=[])
    with pytest.raises(ValueError, match="group id"):
        t["alice"].create_group("", members=["bob"])
    with pytest.raises(ValueError, match="not a member"):
        t["bob"].group("other")


def test_a_restarted_member_keeps_reading_and_sending(tmp_path):
    hub = LocalHub()
    t = Team("alice", "bob", "carol", hub=hub, tmp=tmp_path)
    group = t["alice"].create_group("research", members=["bob", "carol"])
    group.send(text="one")
    t["bob"].group("research").send(text="from bob")
    t["bob"].close()
    group.send(text="while bob is away")  # LocalHub: bob's inbox is gone; he misses this one
    bob = t.join("bob", tmp=tmp_path)
    assert [g.id for g in bob.groups()] == ["research"]
    assert bob.group("research").members == ["alice", "bob", "carol"]
    group.send(text="two")
    bob.group("research").send(text="bob again")  # a new sending chain after the restart
    assert t.texts("bob")[-1] == ("alice", "two")
    assert t.texts("carol")[-2:] == [("alice", "two"), ("bob", "bob again")]
    assert not t.errors["carol"]
    # the administrator restarts too and still administers
    t["alice"].close()
    alice = t.join("alice", tmp=tmp_path)
    alice.group("research").remove("carol")
    alice.group("research").send(text="three")
    assert t.texts("bob")[-1] == ("alice", "three")
    assert ("alice", "three") not in t.texts("carol")


def test_async_agents_use_groups_too():
    async def main() -> list:
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        group = await alice.create_group("research", members=["bob"])
        await group.send(text="async hello")
        msg = await bob.next_message(timeout=5)
        await bob.group("research").send(text="async ack")
        reply = await alice.next_message(timeout=5)
        await alice.close()
        await bob.close()
        return [msg, reply, [g.id for g in alice.groups()]]

    msg, reply, ids = asyncio.run(main())
    assert (msg.group, msg.sender, msg.text) == ("research", "alice", "async hello")
    assert (reply.group, reply.sender, reply.text) == ("research", "bob", "async ack")
    assert ids == ["research"]


def test_group_vectors_through_the_python_api():
    import json
    from pathlib import Path

    vectors = json.loads(
        (Path(__file__).resolve().parents[1] / "vectors" / "group-v1.json").read_text()
    )
    keys = {
        name: c.AgentKeyPair.from_bytes(bytes.fromhex(v["secret_file"]))
        for name, v in vectors["identities"].items()
    }
    m = vectors["membership"]
    verified = c.verify_membership(bytes.fromhex(m["record"]), keys["alice"].identity_key)
    assert verified == {
        "group": "research",
        "admin": "alice",
        "epoch": 1,
        "members": ["alice", "bob", "carol"],
    }
    count = 0
    for msg in vectors["messages"]:
        for d in msg["deliveries"]:
            kp = keys[d["recipient"]]
            state = c.GroupSession.import_state(kp, bytes.fromhex(d["receiver_state_before"]))
            env = c.GroupEnvelope.from_bytes(bytes.fromhex(d["envelope"]))
            assert (env.sender, env.group, env.recipient, env.id) == (
                msg["sender"],
                "research",
                d["recipient"],
                msg["message_id"],
            )
            payload = state.open(env)
            assert payload == json.loads(msg["payload"])
            assert state.export_state().hex() == d["receiver_state_after"]
            count += 1
    assert count == 8


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_through_a_hostile_hub_each_message_is_handled_exactly_once_and_never_altered(seed):
    from agentmesh.testing import HostileHub

    hub = HostileHub(seed=seed, duplicate=0.2, replay=0.2, corrupt=0.2, reorder=0.2, max_held=4)
    t = Team("alice", "bob", "carol", hub=hub)
    group = t["alice"].create_group("research", members=["bob", "carol"])
    bob_group = t["bob"].group("research") if t["bob"].groups() else None
    sent_a = [f"a{i}" for i in range(40)]
    for text in sent_a:
        group.send(text=text)
        if bob_group is not None and text.endswith("0"):
            bob_group.send(text="b" + text)
    hub.release_all()
    for name in ("bob", "carol"):
        from_alice = [x for s, x in t.texts(name) if s == "alice"]
        # exactly the genuine texts, none twice (reordering by the hub may change the order)
        assert len(from_alice) == len(set(from_alice))
        assert set(from_alice) <= set(sent_a)
        assert set(from_alice) == set(sent_a), f"{name} missed {set(sent_a) - set(from_alice)}"
    # and with no hostility at all, every member gets everything exactly once, in order
    calm = Team("alice", "bob", "carol")
    g = calm["alice"].create_group("research", members=["bob", "carol"])
    for text in sent_a:
        g.send(text=text)
    assert [x for _, x in calm.texts("carol")] == sent_a


def test_a_group_message_is_handed_to_the_hub_once_for_every_member():
    names = [f"m{i}" for i in range(10)]
    t = Team("alice", *names)
    group = t["alice"].create_group("research", members=names)
    group.send(text="first")  # (with alice's sender key to each member, pairwise)
    directory = t.hub.directory
    uploads, routed = directory.uploads, directory.routed
    for i in range(3):
        group.send(text=f"m{i}")
    assert (directory.uploads - uploads, directory.routed - routed) == (3, 30)
    for name in names:
        assert [x for _, x in t.texts(name)] == ["first", "m0", "m1", "m2"]


def test_a_member_gone_from_the_hub_does_not_keep_the_message_from_the_others(caplog):
    t = Team("alice", "bob", "carol", "dave")
    group = t["alice"].create_group("research", members=["bob", "carol", "dave"])
    group.send(text="before")
    t["carol"].close()  # (a closed LocalHub agent is not found any more)
    group.send(text="after")
    assert [x for _, x in t.texts("bob")] == [x for _, x in t.texts("dave")] == ["before", "after"]
    assert "not delivered to 'carol'" in caplog.text


def test_a_hostile_hub_treats_each_members_copy_of_one_upload_on_its_own():
    from agentmesh.testing import HostileHub, Rule

    def carols_copy(env) -> bool:
        return type(env) is c.GroupEnvelope and env.recipient == "carol"

    hub = HostileHub(rules=[Rule("drop", match=carols_copy, times=1)])
    t = Team("alice", "bob", "carol", hub=hub)
    group = t["alice"].create_group("research", members=["bob", "carol"])
    uploads = hub.directory.uploads
    group.send(text="one")
    group.send(text="two")
    # alice's sender key to each member (pairwise), then one upload per group message
    assert hub.directory.uploads - uploads == 2 + 2
    assert t.texts("bob") == [("alice", "one"), ("alice", "two")]
    assert t.texts("carol") == [("alice", "two")]  # its copy of "one" was dropped
    assert [s.recipient for s in hub.seen if s.action == "drop"] == ["carol"]


def test_a_group_message_pickles_with_its_group():
    import pickle

    t = Team("alice", "bob")
    t["alice"].create_group("research", members=["bob"]).send(text="pickled")
    msg = t.got["bob"][0]
    copy = pickle.loads(pickle.dumps(msg))
    assert copy == msg and copy.group == "research" and copy.text == "pickled"
    assert copy.to_dict()["group"] == "research"
    assert "group='research'" in repr(msg)


class HoldingHub(LocalHub):
    """A LocalHub that holds back the envelopes ``hold`` picks until ``release``."""

    def __init__(self, hold) -> None:
        super().__init__()
        self.hold = hold
        self.held: list = []

    def deliver(self, envelope) -> None:
        if self.hold(c.as_envelope(envelope)):
            self.held.append(envelope)
            return
        super().deliver(envelope)

    def release(self) -> int:
        held, self.held = self.held, []
        for envelope in held:
            super().deliver(envelope)
        return len(held)


def test_a_message_that_overtakes_its_sender_key_waits_for_it():
    pairwise_to_carol = []

    def alices_sender_key_to_carol(env) -> bool:
        if type(env) is not c.Envelope or env.recipient != "carol":
            return False
        pairwise_to_carol.append(env.id)
        return len(pairwise_to_carol) == 2  # 1: the invitation, 2: alice's sender key

    hub = HoldingHub(alices_sender_key_to_carol)
    t = Team("alice", "bob", "carol", hub=hub)
    group = t["alice"].create_group("research", members=["bob", "carol"])
    group.send(text="first")
    group.send(text="second")
    assert t.texts("bob") == [("alice", "first"), ("alice", "second")]
    assert t.texts("carol") == []  # both wait for the key the hub holds back
    assert not t.errors["carol"]
    assert hub.release() == 1
    assert t.texts("carol") == [("alice", "first"), ("alice", "second")]
    assert not t.errors["carol"]


def test_an_invitation_overtaken_by_a_members_messages_is_caught_up():
    # carol hears bob's sender key and message before alice's invitation reaches her
    pairwise_to_carol = []

    def invitation_to_carol(env) -> bool:
        if type(env) is not c.Envelope or env.recipient != "carol" or env.sender != "alice":
            return False
        pairwise_to_carol.append(env.id)
        return len(pairwise_to_carol) == 1

    hub = HoldingHub(invitation_to_carol)
    t = Team("alice", "bob", "carol", hub=hub)
    t["alice"].create_group("research", members=["bob", "carol"])
    t["bob"].group("research").send(text="bob first")
    assert t["carol"].groups() == [] and t.texts("carol") == []
    assert hub.release() == 1
    assert t.texts("carol") == [("bob", "bob first")]
    assert not t.errors["carol"]


def test_members_sending_to_each_other_from_two_threads_do_not_deadlock():
    import threading

    t = Team("alice", "bob", "carol")
    t["alice"].create_group("research", members=["bob", "carol"])
    faces = {name: t[name].group("research") for name in ("alice", "bob")}

    def chat(name: str) -> None:
        for i in range(100):
            faces[name].send(text=f"{name} {i}")

    threads = [threading.Thread(target=chat, args=(n,), daemon=True) for n in faces]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "deadlocked"
    carol = t.texts("carol")
    for name in faces:
        assert [x for s, x in carol if s == name] == [f"{name} {i}" for i in range(100)]


def test_early_arrivals_are_bounded():
    from agentmesh import agent_groups

    t = Team("alice", "bob", "carol")
    group = t["alice"].create_group("research", members=["bob", "carol"])
    group.send(text="warm-up")  # alice's sender key is handed out now
    # carol loses alice's chain: alice's next messages wait for a key that will not come
    core = t["carol"]._core
    core._groups["research"].session = c.GroupSession(t["carol"].keypair, "research")
    group.send(text="x" * (agent_groups.MAX_HELD_BYTES + 1))
    assert isinstance(t.errors["carol"][-1], AuthenticationError)
    assert "too large" in str(t.errors["carol"][-1])
    for i in range(agent_groups.MAX_PENDING_PER_GROUP + 10):
        group.send(text=f"{i}")
    assert len(core._groups["research"].pending) == agent_groups.MAX_PENDING_PER_GROUP
    assert t.texts("carol") == [("alice", "warm-up")]
    assert len(t.texts("bob")) == agent_groups.MAX_PENDING_PER_GROUP + 12


def test_deniable_agents_use_groups_with_signed_group_messages():
    hub = LocalHub()
    agents = {n: Agent(n, hub=hub, deniable=True) for n in ("alice", "bob")}
    got = []
    agents["bob"].on_message(got.append)
    agents["alice"].create_group("research", members=["bob"]).send(text="hi")
    assert [(m.group, m.text) for m in got] == [("research", "hi")]
    # the control messages went over deniable sessions; the group message is signed anyway
    assert agents["bob"]._core._sessions["alice"].deniable


def test_a_group_message_is_answered_privately_and_agentmesh_fields_are_refused():
    t = Team("alice", "bob", "carol")
    group = t["alice"].create_group("research", members=["bob", "carol"])
    group.send(text="who takes task 3?")
    question = t.got["bob"][0]
    question.reply(text="me")  # a reply goes to the sender alone, over the pairwise session
    answer = t.got["alice"][-1]
    assert (answer.group, answer.sender, answer.text, answer.reply_to) == (
        None,
        "bob",
        "me",
        question.id,
    )
    assert [m.text for m in t.got["carol"]] == ["who takes task 3?"]
    with pytest.raises(ValueError, match="reserved"):
        group.send_payload({"text": "x", "_agentmesh": {"reply_to": "0" * 32}})


def test_a_group_message_over_the_size_limit_is_refused_before_anything_leaves():
    from agentmesh.agent_rules import MAX_ENVELOPE_BYTES
    from agentmesh.errors import MessageTooLargeError

    t = Team("alice", "bob")
    group = t["alice"].create_group("research", members=["bob"])
    with pytest.raises(MessageTooLargeError):
        group.send(text="x" * MAX_ENVELOPE_BYTES)
    group.send(text="small")  # bob gets the sender key with this one, and reads it
    assert t.texts("bob") == [("alice", "small")]
    assert not t.errors["bob"]
