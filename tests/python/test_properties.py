"""Property tests (hypothesis): random hostile schedules, codec and state round trips."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentmesh import Agent
from agentmesh.crypto import AgentKeyPair, CryptoSession, Envelope, perform_key_exchange
from agentmesh.testing import HostileHub, Inbox

probability = st.sampled_from([0.0, 0.05, 0.2, 0.5])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    drop=probability,
    duplicate=probability,
    reorder=probability,
    replay=probability,
    corrupt=probability,
    schedule=st.lists(st.sampled_from(["ab", "ba"]), min_size=1, max_size=40),
)
def test_hostile_schedules_run_each_intact_envelope_exactly_once(
    seed, drop, duplicate, reorder, replay, corrupt, schedule
):
    hub = HostileHub(
        seed=seed, drop=drop, duplicate=duplicate, reorder=reorder, replay=replay, corrupt=corrupt
    )
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    inboxes = {"alice": Inbox(alice), "bob": Inbox(bob)}
    agents = {"alice": alice, "bob": bob}
    sent: dict[str, list[dict]] = {"alice": [], "bob": []}
    for i, step in enumerate(schedule):
        src, dst = ("alice", "bob") if step == "ab" else ("bob", "alice")
        payload = {"text": f"{src}-{i}", "seq": i}
        agents[src].send(dst, **payload)
        sent[src].append(payload)
    hub.release_all()
    by_bytes = {}
    for seen in hub.seen:
        by_bytes.setdefault(seen.data, seen)
    for name, inbox in inboxes.items():
        peer = "bob" if name == "alice" else "alice"
        inbox.assert_subset_of(sent[peer], sender=peer)
        intact = hub.intact_deliveries(recipient=name)
        # Every envelope that arrived unaltered ran its handler exactly once...
        expected_ids = sorted(Envelope.from_bytes(d).id for d in intact)
        assert sorted(m.id for m in inbox.messages) == expected_ids
        # ...and nothing corrupted or replayed ever did.
        inbox.assert_no_duplicates()
    # The agents keep working afterwards on a clean hub.
    hub.probabilities = dict.fromkeys(hub.probabilities, 0.0)
    hub.rules.clear()
    alice.send("bob", text="after the storm")
    bob.send("alice", text="still here")
    assert inboxes["bob"].messages[-1].text == "after the storm"
    assert inboxes["alice"].messages[-1].text == "still here"


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(), json_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(payload=payloads, deniable=st.booleans())
def test_envelope_codec_round_trip(payload, deniable):
    a, b = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    s_a = perform_key_exchange(a, b.public_bundle(), deniable=deniable)
    s_b = perform_key_exchange(b, a.public_bundle(), deniable=deniable)
    env = s_a.seal(payload)
    again = Envelope.from_bytes(env.to_bytes())
    assert again == env and again.to_bytes() == env.to_bytes()
    assert (again.sender, again.recipient, again.timestamp, again.id) == (
        env.sender,
        env.recipient,
        env.timestamp,
        env.id,
    )
    out = s_b.unseal(again)
    assert json.dumps(out, sort_keys=True) == json.dumps(payload, sort_keys=True)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.sampled_from(["ab", "ba", "export_a", "export_b"]), min_size=1, max_size=30)
)
def test_exported_state_round_trips_mid_conversation(steps):
    a, b = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    s = {
        "a": perform_key_exchange(a, b.public_bundle()),
        "b": perform_key_exchange(b, a.public_bundle()),
    }
    kps = {"a": a, "b": b}
    for i, step in enumerate(steps):
        if step.startswith("export_"):
            side = step[-1]
            data = s[side].export_state()
            s[side] = CryptoSession.import_state(kps[side], data)
            assert s[side].export_state() == data
            continue
        src, dst = step[0], step[1]
        env = s[src].seal({"i": i})
        assert s[dst].unseal(env.to_bytes()) == {"i": i}
