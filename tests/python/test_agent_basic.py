"""Spec sections 2-4: the quick start, the Agent API, Message, and the errors users see."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.agent import Message, validate_agent_id
from agentmesh.crypto import AgentKeyPair, Envelope, verify_bundle
from agentmesh.errors import CryptoError

FP_RE = re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4}){7}$")


def test_quick_start_exactly_as_written(capsys):
    from agentmesh import Agent, LocalHub

    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)

    @bob.on_message
    def handle(msg):
        print(f"[{msg.recipient}] <- {msg.sender}: {msg.text}")

    alice.send("bob", text="Hello, Bob! This is end-to-end encrypted.")

    assert capsys.readouterr().out == "[bob] <- alice: Hello, Bob! This is end-to-end encrypted.\n"


# -- agent ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("", "empty"),
        ("x" * 256, "too long"),
        ("é" * 128, "too long"),  # 256 UTF-8 bytes
        ("a\nb", "control character"),
        ("a\x00b", "control character"),
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
        ("\x85next", "control character"),
        ("\ud800", "Unicode"),
        (None, "must be a str"),
        (42, "must be a str"),
        (b"bytes", "must be a str"),
    ],
)
def test_bad_agent_ids_are_value_errors_naming_the_problem(bad, words):
    with pytest.raises(ValueError, match=words):
        Agent(bad)


@pytest.mark.parametrize("good", ["a", "x" * 255, "é" * 127, "agent with spaces", "ü-42.x/y"])
def test_good_agent_ids(good):
    assert validate_agent_id(good) == good
    assert Agent(good).agent_id == good


def test_bad_recipient_id_is_a_value_error():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    for bad in ["", "a\nb", "x" * 300]:
        with pytest.raises(ValueError):
            alice.send(bad, text="hi")
    with pytest.raises(ValueError):
        alice.send(["bob"], text="hi")  # type: ignore[arg-type]


# -- identity ----------------------------------------------------------------------------------


def test_fingerprint_format_and_definition():
    agent = Agent("alice")
    assert FP_RE.match(agent.fingerprint)
    raw = agent.keypair.identity_key
    digest = hashlib.sha256(raw).hexdigest()[:32]
    assert agent.fingerprint == ":".join(digest[i : i + 4] for i in range(0, 32, 4))
    assert Agent("bob").fingerprint != agent.fingerprint


def test_public_bundle_is_json_safe_and_self_certifying():
    agent = Agent("alice")
    bundle = agent.public_bundle
    assert bundle["agent_id"] == "alice"
    assert json.loads(json.dumps(bundle)) == bundle
    assert verify_bundle(bundle) == "alice"
    for key in ("identity_key", "exchange_key", "signed_prekey", "signed_prekey_signature"):
        assert key in bundle
    assert "secret" not in json.dumps(bundle).lower()


def test_existing_keypair_can_be_used():
    kp = AgentKeyPair.generate("carol")
    assert Agent("carol", keypair=kp).fingerprint == kp.fingerprint
    with pytest.raises(ValueError, match="belongs to agent 'carol'"):
        Agent("dave", keypair=kp)


# -- sending -----------------------------------------------------------------------------------


def _pair():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    got: list[Message] = []
    bob.on_message(got.append)
    return hub, alice, bob, got


def test_handler_has_run_when_send_returns():
    _hub, alice, _bob, got = _pair()
    alice.send("bob", text="one")
    assert [m.text for m in got] == ["one"]
    alice.send("bob", text="two")
    assert [m.text for m in got] == ["one", "two"]


def test_send_keywords_land_in_the_payload():
    _hub, alice, _bob, got = _pair()
    alice.send("bob", text="task", type="task", priority=3, data={"a": [1, 2]}, recipient_id="x")
    msg = got[0]
    assert msg.payload == {
        "text": "task",
        "type": "task",
        "priority": 3,
        "data": {"a": [1, 2]},
        "recipient_id": "x",
    }
    assert msg.type == "task"
    assert msg.text == "task"


def test_send_without_text():
    _hub, alice, _bob, got = _pair()
    alice.send("bob", kind="ping")
    assert got[0].text == ""
    assert got[0].payload == {"text": "", "kind": "ping"}


def test_send_payload_low_level():
    _hub, alice, _bob, got = _pair()
    alice.send_payload("bob", {"custom": True, "nested": {"x": None}})
    msg = got[0]
    assert msg.payload == {"custom": True, "nested": {"x": None}}
    assert msg.text == ""
    assert msg.type == "message"


def test_send_returns_the_envelope():
    _hub, alice, _bob, got = _pair()
    env = alice.send("bob", text="hi")
    assert isinstance(env, Envelope)
    assert env.sender == "alice" and env.recipient == "bob"
    assert got[0].id == env.id
    assert b"hi" not in env.to_bytes()


class _Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


@pytest.mark.parametrize("first_contact", [True, False])
def test_unserialisable_payload_is_a_type_error_and_nothing_is_sent(first_contact):
    hub, alice, _bob, got = _pair()
    if not first_contact:
        alice.send("bob", text="setup")
    before = alice.status()
    count = hub.message_count()
    for bad in ({"text": _Opaque()}, {"set": {1, 2}}, {"m": memoryview(b"bytes")}):
        with pytest.raises(TypeError):
            alice.send_payload("bob", bad)
    with pytest.raises(TypeError):
        alice.send("bob", text="x", obj=_Opaque())
    with pytest.raises(TypeError):
        alice.send_payload("bob", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert hub.message_count() == count
    assert alice.status() == before
    assert len(got) == (0 if first_contact else 1)
    # and the session still works afterwards
    alice.send("bob", text="after")
    assert got[-1].text == "after"


def test_type_error_names_the_bad_value():
    _hub, alice, _bob, _got = _pair()
    with pytest.raises(TypeError) as info:
        alice.send("bob", text="x", obj=_Opaque())
    message = str(info.value)
    assert "Opaque" in message or "obj" in message


def test_type_error_names_where_in_the_payload_the_bad_value_sits():
    _hub, alice, _bob, _got = _pair()
    bad = {"plan": [1, {'say "hi"': _Opaque()}]}
    with pytest.raises(TypeError, match=r'^payload\["plan"\]\[1\]\["say \\"hi\\""\] is not JSON'):
        alice.send_payload("bob", bad)
    with pytest.raises(TypeError, match=r'^payload\["n"\]\[0\] is not JSON .*NaN'):
        alice.send_payload("bob", {"n": [float("nan")]})


def test_no_hub_configured():
    lonely = Agent("lonely")
    with pytest.raises(RuntimeError, match="No hub configured"):
        lonely.send("bob", text="hi")
    with pytest.raises(RuntimeError, match="No hub configured"):
        lonely.connect("bob")


def test_peer_not_found_on_hub():
    _hub, alice, _bob, _got = _pair()
    with pytest.raises(ValueError, match="Peer 'nobody' not found on hub"):
        alice.send("nobody", text="hi")
    with pytest.raises(ValueError, match="Peer 'nobody' not found on hub"):
        alice.connect("nobody")
    assert alice.status()["sent"] == 0
    assert alice.status()["active_sessions"] == []


def test_cannot_send_to_itself():
    _hub, alice, _bob, _got = _pair()
    with pytest.raises(ValueError, match="itself"):
        alice.send("alice", text="hi")


def test_both_sides_may_send_first():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    a_got: list[str] = []
    b_got: list[str] = []
    alice.on_message(lambda m: a_got.append(m.text))
    bob.on_message(lambda m: b_got.append(m.text))
    # seal both first messages before either is delivered
    ea = alice._core.seal_for("bob", {"text": "a1"})
    eb = bob._core.seal_for("alice", {"text": "b1"})
    hub.deliver(ea)
    hub.deliver(eb)
    for i in range(2, 5):
        alice.send("bob", text=f"a{i}")
        bob.send("alice", text=f"b{i}")
    assert b_got == ["a1", "a2", "a3", "a4"]
    assert a_got == ["b1", "b2", "b3", "b4"]


def test_replies_from_inside_handlers():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    log: list[str] = []

    @bob.on_message
    def pong(msg):
        log.append(f"bob got {msg.text}")
        if msg.payload["n"] < 5:
            bob.send("alice", text="pong", n=msg.payload["n"] + 1)

    @alice.on_message
    def ping(msg):
        log.append(f"alice got {msg.text}")
        alice.send("bob", text="ping", n=msg.payload["n"] + 1)

    alice.send("bob", text="ping", n=0)
    assert len(log) == 7
    assert log[-1] == "bob got ping"


# -- Message -----------------------------------------------------------------------------------


def test_message_fields():
    _hub, alice, _bob, got = _pair()
    env = alice.send("bob", text="hello", type="greeting", extra=1)
    msg = got[0]
    assert msg.sender == "alice"
    assert msg.recipient == "bob"
    assert msg.payload == {"text": "hello", "type": "greeting", "extra": 1}
    assert msg.text == "hello"
    assert msg.type == "greeting"
    assert isinstance(msg.timestamp, int)
    assert msg.timestamp == env.timestamp
    import time

    assert abs(msg.timestamp - time.time() * 1000) < 60_000
    assert isinstance(msg.id, str) and msg.id == env.id
    d = msg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["sender"] == "alice" and d["id"] == msg.id
    assert "alice" in repr(msg)


def test_message_ids_are_unique_and_messages_immutable():
    _hub, alice, _bob, got = _pair()
    for _ in range(50):
        alice.send("bob", text="same")
    assert len({m.id for m in got}) == 50
    with pytest.raises(AttributeError):
        got[0].text = "changed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        got[0].sender = "mallory"  # type: ignore[misc]


def test_message_type_defaults_to_message():
    _hub, alice, _bob, got = _pair()
    alice.send("bob", text="x")
    assert got[0].type == "message"


# -- connect / bundles / peers / status --------------------------------------------------------


def test_connect_pre_establishes_a_session():
    hub, alice, bob, got = _pair()
    fp = alice.connect("bob")
    assert fp == bob.fingerprint
    assert alice.status()["active_sessions"] == ["bob"]
    assert hub.message_count() == 0
    alice.send("bob", text="after connect")
    assert got[0].text == "after connect"
    assert alice.connect("bob") == bob.fingerprint  # again: re-verifies, no error


def test_connect_with_bundle_peer_to_peer_without_a_hub():
    alice = Agent("alice")
    bob = Agent("bob")
    got: list[str] = []
    bob.on_message(lambda m: got.append(m.text))
    assert alice.connect_with_bundle(bob.public_bundle) == bob.fingerprint
    assert bob.connect_with_bundle(alice.public_bundle) == alice.fingerprint
    env = alice.send("bob", text="out of band")
    msg = bob.receive(env.to_bytes())
    assert msg is not None and msg.text == "out of band"
    assert got == ["out of band"]
    reply = bob.send("alice", text="back")
    assert alice.receive(reply).text == "back"
    assert alice.list_peers() == ["bob"]


def test_connect_with_a_forged_bundle_is_refused():
    alice = Agent("alice")
    bundle = Agent("bob").public_bundle
    bundle["agent_id"] = "mallory"
    with pytest.raises(CryptoError):
        alice.connect_with_bundle(bundle)
    assert alice.status()["active_sessions"] == []


def test_list_peers_never_includes_self():
    hub = LocalHub()
    agents = [Agent(name, hub=hub) for name in ("a", "b", "c", "d")]
    for agent in agents:
        peers = agent.list_peers()
        assert agent.agent_id not in peers
        assert sorted(peers) == sorted({"a", "b", "c", "d"} - {agent.agent_id})
    assert sorted(hub.list_agents()) == ["a", "b", "c", "d"]


def test_status():
    _hub, alice, bob, _got = _pair()
    alice.on_message(lambda m: None)
    status = alice.status()
    for key in (
        "agent_id",
        "fingerprint",
        "active_sessions",
        "known_peers",
        "handlers",
        "sent",
        "received",
        "rejected",
    ):
        assert key in status
    assert status["agent_id"] == "alice"
    assert status["fingerprint"] == alice.fingerprint
    assert status["active_sessions"] == [] and status["known_peers"] == []
    assert status["handlers"] == 1
    assert (status["sent"], status["received"], status["rejected"]) == (0, 0, 0)
    for i in range(3):
        alice.send("bob", text=str(i))
    bob.send("alice", text="back")
    status = alice.status()
    assert status["active_sessions"] == ["bob"]
    assert status["known_peers"] == ["bob"]
    assert (status["sent"], status["received"], status["rejected"]) == (3, 1, 0)
    assert bob.status()["received"] == 3
    assert bob.status()["handlers"] == 1
    json.dumps(status)


# -- hubs --------------------------------------------------------------------------------------


def test_local_hub_interface():
    hub, alice, bob, _got = _pair()
    assert hub.get_bundle("bob") == bob.public_bundle
    assert hub.get_bundle("nobody") is None
    assert hub.message_count() == 0
    env = alice.send("bob", text="x")
    assert hub.message_count() == 1
    hub.deliver(alice._core.seal_for("bob", {"text": "direct"}))
    assert hub.message_count() == 2
    with pytest.raises(ValueError, match="not found on hub"):
        hub.deliver(
            bob._core.seal_for("alice", {"text": "x"}).to_bytes().replace(b"alice", b"ghost")
        )
    assert env.to_bytes()


def test_local_hub_refuses_a_second_identity_for_a_live_id():
    hub = LocalHub()
    Agent("bob", hub=hub)
    with pytest.raises(ValueError, match="already registered"):
        Agent("bob", hub=hub)


def test_close_and_context_manager():
    hub = LocalHub()
    with Agent("alice", hub=hub) as alice, Agent("bob", hub=hub) as bob:
        alice.send("bob", text="x")
        alice.flush()
        alice.flush(timeout=0.001)
    assert alice.closed and bob.closed
    assert hub.list_agents() == []
    alice.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        alice.send("bob", text="after close")
    # the id is free again after close
    Agent("bob", hub=hub)


def test_sending_to_a_closed_agent():
    _hub, alice, bob, _got = _pair()
    alice.send("bob", text="x")
    bob.close()
    with pytest.raises(ValueError, match="Peer 'bob' not found on hub"):
        alice.send("bob", text="y")


def test_repr():
    agent = Agent("alice")
    assert "alice" in repr(agent) and agent.fingerprint in repr(agent)
    assert "LocalHub" in repr(LocalHub())


def test_concurrent_senders_on_a_local_hub():
    import threading

    hub = LocalHub()
    bob = Agent("bob", hub=hub)
    senders = [Agent(f"s{i}", hub=hub) for i in range(4)]
    got: list[Message] = []
    lock = threading.Lock()
    errors: list = []
    bob.on_error(errors.append)

    @bob.on_message
    def record(msg):
        with lock:
            got.append(msg)
        if msg.payload["n"] % 50 == 0:
            bob.send(msg.sender, text="ack")  # replies from inside the handler, concurrently

    def blast(agent, shared):
        for n in range(200):
            agent.send("bob", text="x", n=n)
            shared.send("bob", text="shared", n=n)

    shared = Agent("shared", hub=hub)
    threads = [threading.Thread(target=blast, args=(s, shared)) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 4 * 200 * 2
    for s in senders:
        assert [m.payload["n"] for m in got if m.sender == s.agent_id] == list(range(200))
    assert sorted(m.payload["n"] for m in got if m.sender == "shared") == sorted(
        list(range(200)) * 4
    )
    assert bob.status()["received"] == 1600


def test_log_level_sets_the_agents_logger():
    import logging

    quiet = Agent("quiet-agent")
    loud = Agent("loud-agent", log_level=logging.DEBUG)
    assert quiet.log.level == logging.WARNING
    assert loud.log.level == logging.DEBUG
    assert loud.log.name == "agentmesh.agent.loud-agent"
