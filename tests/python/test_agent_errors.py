"""Rejected envelopes: tampered, replayed, unknown sender, identity changed (TOFU)."""

from __future__ import annotations

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.errors import (
    CryptoError,
    IdentityChangedError,
    ReplayError,
    UnknownSenderError,
)


class Recorder:
    def __init__(self, agent: Agent) -> None:
        self.messages: list = []
        self.errors: list[BaseException] = []
        agent.on_message(self.messages.append)
        agent.on_error(self.errors.append)


def _setup():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    return hub, alice, bob, Recorder(bob)


def test_every_flipped_byte_is_rejected_and_never_reaches_a_handler():
    hub, alice, bob, rec = _setup()
    alice.send("bob", text="establish")  # the session exists; now tamper with the next one
    env = alice._core.seal_for("bob", {"text": "the real message", "amount": 100})
    raw = env.to_bytes()
    rejected_by_hub = 0
    for i in range(len(raw)):
        for mask in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[i] ^= mask
            try:
                hub.deliver(bytes(tampered))
            except (ValueError, CryptoError):
                rejected_by_hub += 1  # unparseable, or routed to nobody: refused at the hub
    assert [m.text for m in rec.messages] == ["establish"]
    assert len(rec.errors) + rejected_by_hub == 2 * len(raw)
    assert all(isinstance(e, CryptoError) for e in rec.errors)
    assert bob.status()["rejected"] == len(rec.errors)
    # the untouched envelope is still accepted: rejections left the session unchanged
    hub.deliver(raw)
    assert [m.text for m in rec.messages] == ["establish", "the real message"]
    assert rec.messages[-1].payload["amount"] == 100


def test_tampered_first_message_is_rejected_and_no_session_is_kept():
    hub, alice, _bob, rec = _setup()
    raw = bytearray(alice._core.seal_for("bob", {"text": "first"}).to_bytes())
    raw[-5] ^= 0x20
    hub.deliver(bytes(raw))
    assert rec.messages == [] and len(rec.errors) == 1
    assert isinstance(rec.errors[0], CryptoError)


def test_replayed_envelope_is_rejected():
    hub, alice, bob, rec = _setup()
    envs = [alice.send("bob", text=f"m{i}") for i in range(3)]
    hub.deliver(envs[1])
    hub.deliver(envs[0].to_bytes())
    hub.deliver(envs[2])
    assert [m.text for m in rec.messages] == ["m0", "m1", "m2"]
    assert len(rec.errors) == 3
    assert all(isinstance(e, ReplayError) for e in rec.errors)
    assert bob.status()["rejected"] == 3
    assert bob.status()["received"] == 3
    assert rec.errors[0].sender == "alice"


def test_reordered_envelopes_are_accepted_once_each():
    hub, alice, _bob, rec = _setup()
    alice.send("bob", text="first")
    envs = [alice._core.seal_for("bob", {"text": f"m{i}"}) for i in range(5)]
    for env in reversed(envs):
        hub.deliver(env)
    for env in envs:
        hub.deliver(env)
    assert sorted(m.text for m in rec.messages[1:]) == [f"m{i}" for i in range(5)]
    assert len(rec.errors) == 5 and all(isinstance(e, ReplayError) for e in rec.errors)


def test_unknown_sender_is_rejected():
    hub, _alice, bob, rec = _setup()
    carol = Agent("carol")  # not on the hub
    carol.connect_with_bundle(bob.public_bundle)
    env = carol.send("bob", text="who am I?")
    hub.deliver(env)
    assert rec.messages == []
    assert len(rec.errors) == 1
    assert isinstance(rec.errors[0], UnknownSenderError)
    assert "carol" in str(rec.errors[0])


def test_envelope_for_someone_else_is_rejected():
    hub, alice, _bob, _rec = _setup()
    carol = Agent("carol", hub=hub)
    carol_rec = Recorder(carol)
    env = alice.send("bob", text="for bob only")
    msg = carol.receive(env)  # handed to the wrong agent out of band
    assert msg is None
    assert carol_rec.messages == [] and len(carol_rec.errors) == 1
    assert isinstance(carol_rec.errors[0], CryptoError)


def test_garbage_bytes_out_of_band_are_rejected():
    _hub, _alice, bob, rec = _setup()
    assert bob.receive(b"not an envelope") is None
    assert bob.receive(b"") is None
    assert len(rec.errors) == 2 and all(isinstance(e, CryptoError) for e in rec.errors)


def test_without_error_handlers_rejections_are_logged(caplog):
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    Agent("bob", hub=hub)
    env = alice.send("bob", text="x")
    hub.deliver(env)
    assert "rejected" in caplog.text


# -- trust on first use ------------------------------------------------------------------------


def _identity_change():
    """alice knows bob; bob is replaced by a new identity under the same id."""
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    arec = Recorder(alice)
    alice.send("bob", text="hi old bob")
    old_fp = bob.fingerprint
    bob.close()
    new_bob = Agent("bob", hub=hub)
    brec = Recorder(new_bob)
    assert new_bob.fingerprint != old_fp
    return hub, alice, new_bob, arec, brec, old_fp


def test_identity_change_is_rejected_on_receive_and_raised_on_send():
    _hub, alice, new_bob, arec, brec, old_fp = _identity_change()
    new_bob.send("alice", text="trust me, I am bob")
    assert arec.messages == []
    assert len(arec.errors) == 1
    err = arec.errors[0]
    assert isinstance(err, IdentityChangedError)
    assert err.peer_id == "bob"
    assert err.old_fingerprint == old_fp and err.new_fingerprint == new_bob.fingerprint
    assert "trust_new_identity" in str(err)
    with pytest.raises(IdentityChangedError) as info:
        alice.send("bob", text="are you still bob?")
    assert info.value.new_fingerprint == new_bob.fingerprint
    with pytest.raises(IdentityChangedError):
        alice.connect("bob")
    assert brec.messages == []


def test_connect_detects_a_changed_identity():
    _hub, alice, _new_bob, _arec, _brec, old_fp = _identity_change()
    with pytest.raises(IdentityChangedError) as info:
        alice.connect("bob")
    assert info.value.old_fingerprint == old_fp


def test_trust_new_identity_after_checking_the_fingerprint():
    _hub, alice, new_bob, arec, brec, old_fp = _identity_change()
    with pytest.raises(IdentityChangedError):
        alice.connect("bob")
    with pytest.raises(ValueError, match="does not present"):
        alice.trust_new_identity("bob", old_fp)
    with pytest.raises(ValueError):
        alice.trust_new_identity("bob", "not a fingerprint")
    with pytest.raises(IdentityChangedError):
        alice.send("bob", text="still refused")
    alice.trust_new_identity("bob", new_bob.fingerprint)
    alice.send("bob", text="hello new bob")
    assert [m.text for m in brec.messages] == ["hello new bob"]
    new_bob.send("alice", text="hello alice")
    assert [m.text for m in arec.messages] == ["hello alice"]
    assert alice.connect("bob") == new_bob.fingerprint


def test_pinned_key_is_checked_on_first_contact_from_a_bundle():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    real_bob = Agent("bob")
    fake_bob = Agent("bob")
    alice_no_hub = Agent("alice2")
    alice_no_hub.connect_with_bundle(real_bob.public_bundle)
    with pytest.raises(IdentityChangedError):
        alice_no_hub.connect_with_bundle(fake_bob.public_bundle)
    assert alice_no_hub.status()["known_peers"] == ["bob"]
    assert alice is not None


def test_hub_serving_a_bundle_for_the_wrong_id_is_refused():
    class LyingHub(LocalHub):
        def get_bundle(self, agent_id):
            bundle = super().get_bundle("mallory")
            return bundle

    hub = LyingHub()
    alice = Agent("alice", hub=hub)
    Agent("bob", hub=hub)
    Agent("mallory", hub=hub)
    with pytest.raises(CryptoError):
        alice.send("bob", text="secret")
    assert alice.status()["sent"] == 0


def test_peer_that_lost_its_state_starts_over_with_the_same_identity():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    arec = Recorder(alice)
    first = bob.send("alice", text="first setup")
    alice.send("bob", text="reply")
    bob.send("alice", text="established")
    keypair = bob.keypair
    bob.close()
    bob2 = Agent("bob", hub=hub, keypair=keypair)  # same identity, no session state
    brec = Recorder(bob2)
    bob2.send("alice", text="I lost my state")
    alice.send("bob", text="welcome back")
    assert [m.text for m in arec.messages] == ["first setup", "established", "I lost my state"]
    assert [m.text for m in brec.messages] == ["welcome back"]
    assert arec.errors == []
    # an old set-up replayed after the re-key is still a replay
    hub.deliver(first.to_bytes())
    assert len(arec.errors) == 1 and isinstance(arec.errors[0], ReplayError)
    assert len(arec.messages) == 3
