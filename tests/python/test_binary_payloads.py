"""Binary payloads: ``bytes`` values travel as raw bytes (no base64) on every hub, pairwise, in
groups, in replies and through the low-level API, and come back as ``bytes``; a payload without
any stays its JSON byte for byte; the reserved reference key is refused."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable

import pytest

from agentmesh import Agent, AsyncAgent, LocalHub
from agentmesh import _native as native
from agentmesh import crypto as c
from agentmesh.agent_rules import MAX_ENVELOPE_BYTES
from agentmesh.errors import FormatError, MessageTooLargeError, VersionError

BLOB = bytes(range(256)) * 16 + b"\x00\xff"  # every byte value, not UTF-8


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def collect(agent: Agent) -> list:
    got: list = []
    agent.on_message(got.append)
    return got


def test_bytes_travel_pairwise_nested_and_as_message_data(every_hub) -> None:
    alice, bob = Agent("alice", hub=every_hub), Agent("bob", hub=every_hub)
    got = collect(bob)
    try:
        alice.send("bob", text="file", data=BLOB, parts=[b"a", {"b": bytearray(b"\x00b")}])
        alice.send("bob", text="plain")
        alice.flush(30)
        wait_for(lambda: len(got) == 2, "both messages")
        first, second = got
        assert first.data == BLOB and type(first.data) is bytes
        assert first.payload["parts"] == [b"a", {"b": b"\x00b"}]
        assert first.text == "file"
        assert second.data is None and second.payload == {"text": "plain"}
    finally:
        alice.close()
        bob.close()


def test_three_mib_fit_and_the_envelope_limit_holds(every_hub) -> None:
    alice, bob = Agent("alice", hub=every_hub), Agent("bob", hub=every_hub)
    got = collect(bob)
    big = os.urandom(3 << 20)
    try:
        env = alice.send("bob", data=big)
        assert len(env.to_bytes()) < len(big) + 512  # not base64: 3 MiB would be 4 MiB
        with pytest.raises(MessageTooLargeError):
            alice.send("bob", data=bytes(MAX_ENVELOPE_BYTES))
        alice.flush(30)
        wait_for(lambda: len(got) == 1, "the 3 MiB message")
        assert got[0].data == big
    finally:
        alice.close()
        bob.close()


def test_a_reply_carries_bytes_back(every_hub) -> None:
    alice, bob = Agent("alice", hub=every_hub), Agent("bob", hub=every_hub)

    @bob.on_message
    def answer(msg) -> None:
        msg.reply(text="reversed", data=msg.data[::-1])

    try:
        reply = alice.request("bob", text="reverse", data=BLOB, timeout=30)
        assert reply.data == BLOB[::-1]
        assert reply.reply_to is not None
    finally:
        alice.close()
        bob.close()


def test_group_messages_carry_bytes(every_hub) -> None:
    agents = {name: Agent(name, hub=every_hub) for name in ("alice", "bob", "carol")}
    got = {name: collect(agents[name]) for name in ("bob", "carol")}
    try:
        group = agents["alice"].create_group("files", members=["bob", "carol"])
        group.send(text="to all", data=BLOB, more=[b""])
        agents["alice"].flush(30)
        for name in ("bob", "carol"):
            wait_for(lambda n=name: any(m.group == "files" for m in got[n]), f"{name}'s copy")
            (msg,) = [m for m in got[name] if m.group == "files"]
            assert msg.data == BLOB and msg.payload["more"] == [b""]
    finally:
        for agent in agents.values():
            agent.close()


def test_async_agent_sends_and_receives_bytes() -> None:
    async def main() -> None:
        hub = LocalHub()
        alice, bob = AsyncAgent("alice", hub=hub), AsyncAgent("bob", hub=hub)
        got: list = []
        bob.on_message(got.append)
        await alice.send("bob", data=BLOB)
        assert got[0].data == BLOB
        await alice.close()
        await bob.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_nats_hub_carries_bytes(tmp_path) -> None:
    pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")
    from natsutil import fresh_prefix

    from agentmesh import NatsHub
    from agentmesh.nats_cluster import NatsCluster

    with NatsCluster(tmp_path / "nats", nodes=1) as cluster:
        hub = NatsHub(cluster.urls, prefix=fresh_prefix(), timeout=20.0)
        alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
        got = collect(bob)
        try:
            big = os.urandom(3 << 20)  # (over NATS's default 1 MiB message size)
            alice.send("bob", text="file", data=BLOB)
            alice.send("bob", text="big", data=big)
            alice.flush(30)
            wait_for(lambda: len(got) == 2, "the messages over NATS")
            assert [m.data for m in got] == [BLOB, big]
        finally:
            alice.close()
            bob.close()
            hub.close()


# -- the plaintext form -----------------------------------------------------------------------


def _pair() -> tuple:
    alice, bob = c.AgentKeyPair.generate("alice"), c.AgentKeyPair.generate("bob")
    to_bob = c.perform_key_exchange(alice, bob.public_bundle())
    from_alice = c.perform_key_exchange(bob, alice.public_bundle())
    return alice, to_bob, from_alice


def test_low_level_seal_and_unseal_round_trip_bytes() -> None:
    alice, to_bob, from_alice = _pair()
    payload = {"text": "x", "data": BLOB, "nested": {"list": [b"", bytearray(b"1")]}}
    env = c.seal(to_bob, alice, "alice", "bob", payload)
    assert from_alice.unseal(env) == {
        "text": "x",
        "data": BLOB,
        "nested": {"list": [b"", b"1"]},
    }


def test_sealed_envelope_is_not_base64_inflated() -> None:
    _, to_bob, from_alice = _pair()
    blob = os.urandom(1 << 20)
    raw = to_bob.seal({"data": blob})
    as_text = to_bob.seal({"data": base64.b64encode(blob).decode()})
    overhead = len(raw.to_bytes()) - len(blob)
    assert 0 < overhead < 400, overhead  # header, signature, tag, framing: a constant
    assert len(as_text.to_bytes()) > len(blob) * 4 // 3
    assert from_alice.unseal(raw)["data"] == blob


def test_a_payload_without_bytes_is_its_compact_json() -> None:
    payload = {"text": "héllo", "n": [1, 2.5, None, True], "d": {"k": "v"}}
    assert native.payload_to_bytes(payload) == json.dumps(
        payload, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@pytest.mark.parametrize(
    "payload",
    [
        {"x": {native.BYTES_REFERENCE_KEY: 0}},
        {"x": [{"a": 1, native.BYTES_REFERENCE_KEY: "anything"}]},
        {native.BYTES_REFERENCE_KEY: b"even with bytes"},
    ],
)
def test_the_reference_key_is_refused_in_any_payload(payload) -> None:
    _, to_bob, _ = _pair()
    with pytest.raises(ValueError, match="reserved for binary values"):
        to_bob.seal(payload)


def test_a_memoryview_is_refused_by_name() -> None:
    _, to_bob, _ = _pair()
    with pytest.raises(TypeError, match=r'payload\["m"\].*memoryview'):
        to_bob.seal({"m": memoryview(b"x")})


def test_an_older_peers_reference_lookalike_stays_a_dict() -> None:
    # Pure JSON (no framing) never resolves references: what an older build sent reads as sent.
    assert native.payload_from_bytes(b'{"x":{"_agentmesh_bytes":0}}') == {
        "x": {"_agentmesh_bytes": 0}
    }


@pytest.mark.parametrize("text", [b"[1, 2]", b'"text"', b"3", b"null", b"", b" [{}]"])
def test_a_payload_that_is_not_a_json_object_is_a_format_error(text: bytes) -> None:
    # What unseal reads after decrypting: a peer's list or string must not reach the
    # application where it expects the payload dict.
    with pytest.raises(FormatError, match="payload is not a JSON object"):
        native.payload_from_bytes(text)
    framed = b"AMP\x01" + (1).to_bytes(4, "big") + (25).to_bytes(4, "big")
    framed += b'[{"_agentmesh_bytes":0}]' + b" " + (1).to_bytes(4, "big") + b"x"
    with pytest.raises(FormatError, match="payload is not a JSON object"):
        native.payload_from_bytes(framed)
    assert native.payload_from_bytes(b' \n{"a": 1}') == {"a": 1}


def test_malformed_framing_is_a_format_error_naming_it() -> None:
    good = native.payload_to_bytes({"data": b"blob"})
    with pytest.raises(FormatError, match="binary payload"):
        native.payload_from_bytes(good[:-1])
    with pytest.raises(VersionError, match="binary payload"):
        native.payload_from_bytes(b"AMP\x02" + good[4:])
