"""Encrypted groups through a real network hub process on 127.0.0.1 (``HubProcess``): delivery
in per-sender order, removal, late joiners, forged membership changes, offline members catching
up and restarted members continuing (their group state is in the state file)."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable

import pytest

from agentmesh import Agent
from agentmesh import crypto as c
from agentmesh.agent_groups import GROUP_CONTROL_TYPE
from agentmesh.errors import AuthenticationError, SignatureError
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

DEADLINE = 30.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def hub(tmp_path):
    with HubProcess(tmp_path / "hub.sqlite3", 0, log_level="warning").start() as proc:
        yield proc


class NetTeam:
    def __init__(self, hub: HubProcess, tmp) -> None:
        self.net = NetworkHub("127.0.0.1", hub.port)
        self.tmp = tmp
        self.agents: dict[str, Agent] = {}
        self.got: dict[str, list] = {}
        self.errors: dict[str, list] = {}

    def join(self, name: str) -> Agent:
        agent = Agent(name, hub=self.net, keypair_path=self.tmp / f"{name}.key")
        self.agents[name] = agent
        self.got.setdefault(name, [])
        self.errors.setdefault(name, [])
        agent.on_message(lambda m, n=name: self.got[n].append(m))
        agent.on_error(lambda e, n=name: self.errors[n].append(e))
        return agent

    def texts(self, name: str) -> list[tuple[str, str]]:
        return [(m.sender, m.text) for m in list(self.got[name]) if m.group == "research"]

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
        self.net.close()


@pytest.fixture
def team(hub, tmp_path):
    t = NetTeam(hub, tmp_path)
    yield t
    t.close()


def test_members_receive_each_message_once_in_per_sender_order(team):
    alice, bob, carol = team.join("alice"), team.join("bob"), team.join("carol")
    group = alice.create_group("research", members=["bob", "carol"])
    wait_for(lambda: bob.groups() and carol.groups(), "the invitations")
    bob_group = bob.group("research")
    for i in range(30):
        group.send(text=f"a{i}")
        if i % 5 == 0:
            bob_group.send(text=f"b{i}")
    expected_a = [f"a{i}" for i in range(30)]
    expected_b = [f"b{i}" for i in range(0, 30, 5)]
    wait_for(lambda: len(team.texts("carol")) == 36, "carol's 36 messages")
    wait_for(lambda: len(team.texts("bob")) == 30, "bob's 30 messages")
    wait_for(lambda: len(team.texts("alice")) == 6, "alice's 6 messages")
    carol_got = team.texts("carol")
    assert [t for s, t in carol_got if s == "alice"] == expected_a
    assert [t for s, t in carol_got if s == "bob"] == expected_b
    assert [t for _, t in team.texts("bob")] == expected_a
    assert [t for _, t in team.texts("alice")] == expected_b
    assert not any(team.errors.values())
    time.sleep(0.3)  # nothing arrives twice
    assert len(team.texts("carol")) == 36


def test_removal_excludes_and_a_late_joiner_reads_nothing_earlier(team):
    alice, bob, carol = team.join("alice"), team.join("bob"), team.join("carol")
    group = alice.create_group("research", members=["bob", "carol"])
    wait_for(lambda: bob.groups() and carol.groups(), "the invitations")
    group.send(text="all three")
    wait_for(lambda: len(team.texts("carol")) == 1, "carol's first message")
    stolen = carol._core._groups["research"].session.export_state()
    group.remove("carol")
    wait_for(lambda: not carol.groups(), "carol's removal")
    wait_for(lambda: bob.group("research").members == ["alice", "bob"], "bob's new view")
    after = [group.send(text="without carol"), bob.group("research").send(text="bob only")]
    wait_for(lambda: ("alice", "without carol") in team.texts("bob"), "bob's message")
    wait_for(lambda: ("bob", "bob only") in team.texts("alice"), "alice's message")
    thief = c.GroupSession.import_state(carol.keypair, stolen)
    for env in after:
        with pytest.raises(AuthenticationError):
            thief.open(env.to_bytes_for("carol"))
    # dave joins later: reads from now on only
    dave = team.join("dave")
    group.add("dave")
    wait_for(lambda: bool(dave.groups()), "dave's invitation")
    group.send(text="hello dave")
    wait_for(lambda: team.texts("dave") == [("alice", "hello dave")], "dave's message")
    session = dave._core._groups["research"].session
    for env in after:
        with pytest.raises(Exception):  # noqa: B017 (replay or unknown chain: never opened)
            session.open(env.to_bytes_for("dave"))
    assert team.texts("carol") == [("alice", "all three")]


def test_a_forged_membership_change_is_refused(team):
    alice, bob, mallory = team.join("alice"), team.join("bob"), team.join("mallory")
    alice.create_group("research", members=["bob", "mallory"])
    wait_for(lambda: bob.groups() and mallory.groups(), "the invitations")
    record = c.sign_membership(mallory.keypair, "research", 7, ["alice", "mallory"])
    mallory.send_payload(
        "bob",
        {
            "type": GROUP_CONTROL_TYPE,
            "op": "membership",
            "group": "research",
            "record": base64.b64encode(record).decode(),
        },
    )
    wait_for(lambda: bool(team.errors["bob"]), "bob's rejection")
    assert isinstance(team.errors["bob"][0], SignatureError)
    assert bob.group("research").members == ["alice", "bob", "mallory"]
    assert team.got["bob"] == []


def test_offline_members_catch_up_and_restarted_members_continue(team):
    alice, bob, carol = team.join("alice"), team.join("bob"), team.join("carol")
    group = alice.create_group("research", members=["bob", "carol"])
    wait_for(lambda: bob.groups() and carol.groups(), "the invitations")
    group.send(text="one")
    wait_for(lambda: len(team.texts("bob")) == 1, "bob's first message")
    bob.close()
    for i in range(5):
        group.send(text=f"while away {i}")
    alice.flush(10)
    bob = team.join("bob")  # same keypair_path: the group state comes back from the state file
    wait_for(lambda: len(team.texts("bob")) == 6, "bob catching up")
    assert [t for _, t in team.texts("bob")] == ["one"] + [f"while away {i}" for i in range(5)]
    bob.group("research").send(text="bob is back")  # a new sending chain, handed out first
    wait_for(lambda: ("bob", "bob is back") in team.texts("carol"), "carol hearing bob")
    # the sender restarts too: a new chain, members keep reading
    alice.close()
    alice = team.join("alice")
    alice.group("research").send(text="alice is back")
    wait_for(lambda: ("alice", "alice is back") in team.texts("carol"), "carol hearing alice")
    wait_for(lambda: ("alice", "alice is back") in team.texts("bob"), "bob hearing alice")
    assert not any(team.errors.values())
