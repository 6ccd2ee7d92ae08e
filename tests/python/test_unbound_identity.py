"""Code written for the original AgentMesh: ``AgentKeyPair()`` with no id (spec section 6).

The session of an identity without an id is unbound until its first seal (the ids given) or its
first accepted unseal (the ids in the header) fixes both ids for good; see docs/crypto-api.md.
"""

from __future__ import annotations

import pytest

from agentmesh import Agent
from agentmesh.crypto import (
    AgentKeyPair,
    AuthenticationError,
    CryptoSession,
    FormatError,
    IdentityError,
    SignatureError,
    fingerprint_of,
    perform_key_exchange,
    seal,
    unseal,
    verify_bundle,
)


def test_the_spec_sequence_as_written():
    alice_kp, bob_kp = AgentKeyPair(), AgentKeyPair()
    alice_bundle, bob_bundle = alice_kp.public_bundle(), bob_kp.public_bundle()
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    env = seal(s_a, alice_kp, "alice", "bob", {"text": "hi"})
    assert unseal(s_b, env, alice_bundle) == {"text": "hi"}


@pytest.mark.parametrize("deniable", [False, True])
@pytest.mark.parametrize("alice_first", [True, False])
def test_both_sides_may_seal_first_in_either_order(alice_first, deniable):
    alice_kp, bob_kp = AgentKeyPair(), AgentKeyPair()
    alice_bundle, bob_bundle = alice_kp.public_bundle(), bob_kp.public_bundle()
    s_a = perform_key_exchange(alice_kp, bob_bundle, deniable=deniable)
    s_b = perform_key_exchange(bob_kp, alice_bundle, deniable=deniable)
    if alice_first:
        env_a = seal(s_a, alice_kp, "alice", "bob", {"text": "from alice"})
        env_b = seal(s_b, bob_kp, "bob", "alice", {"text": "from bob"})
    else:
        env_b = seal(s_b, bob_kp, "bob", "alice", {"text": "from bob"})
        env_a = seal(s_a, alice_kp, "alice", "bob", {"text": "from alice"})
    assert unseal(s_b, env_a, alice_bundle) == {"text": "from alice"}
    assert unseal(s_a, env_b, bob_bundle) == {"text": "from bob"}
    for i in range(3):
        assert unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"i": i}), alice_bundle) == {"i": i}
        assert unseal(s_a, seal(s_b, bob_kp, "bob", "alice", {"j": i}), bob_bundle) == {"j": i}
    assert s_a.established and s_b.established
    ids = (s_a.local_id, s_a.peer_id, s_b.local_id, s_b.peer_id)
    assert ids == ("alice", "bob", "bob", "alice")


def _pair():
    alice_kp, bob_kp = AgentKeyPair(), AgentKeyPair()
    alice_bundle, bob_bundle = alice_kp.public_bundle(), bob_kp.public_bundle()
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    return alice_kp, bob_kp, alice_bundle, bob_bundle, s_a, s_b


def test_an_unbound_session_has_no_ids_until_its_first_seal_or_unseal():
    alice_kp, _, alice_bundle, _, s_a, s_b = _pair()
    assert (s_a.local_id, s_a.peer_id, s_b.local_id, s_b.peer_id) == (None, None, None, None)
    with pytest.raises(IdentityError, match="not fixed yet"):
        s_a.seal({"text": "which ids?"})
    with pytest.raises(IdentityError, match="not fixed yet"):
        s_a.seal_many([{"text": "which ids?"}])
    env = seal(s_a, alice_kp, "alice", "bob", {"n": 1})
    assert (s_a.local_id, s_a.peer_id) == ("alice", "bob")
    assert (env.sender, env.recipient) == ("alice", "bob")
    assert unseal(s_b, env, alice_bundle) == {"n": 1}
    assert (s_b.local_id, s_b.peer_id) == ("bob", "alice")
    assert s_a.seal({"n": 2}).sender == "alice"  # the fast path works once the ids are fixed
    assert "alice" in repr(s_a) and "bob" in repr(s_a)


def test_a_wrong_id_after_binding_is_an_identity_error():
    alice_kp, bob_kp, alice_bundle, _, s_a, s_b = _pair()
    unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"n": 1}), alice_bundle)
    with pytest.raises(IdentityError, match="sender_id"):
        seal(s_a, alice_kp, "mallory", "bob", {})
    with pytest.raises(IdentityError, match="recipient_id"):
        seal(s_a, alice_kp, "alice", "carol", {})
    with pytest.raises(IdentityError, match="sender_id"):
        seal(s_b, bob_kp, "robert", "alice", {})  # bound by the header it accepted
    with pytest.raises(IdentityError, match="recipient_id"):
        seal(s_b, bob_kp, "bob", "alicia", {})
    with pytest.raises(IdentityError, match="sender_keypair"):
        seal(s_a, bob_kp, "alice", "bob", {})
    assert unseal(s_a, seal(s_b, bob_kp, "bob", "alice", {"ok": 1}), bob_kp.public_bundle()) == {
        "ok": 1
    }


def test_a_failed_first_seal_does_not_bind():
    alice_kp, bob_kp, _, _, s_a, _ = _pair()
    with pytest.raises(IdentityError, match="sender_keypair"):
        seal(s_a, bob_kp, "alice", "bob", {})
    with pytest.raises(IdentityError, match="same agent"):
        seal(s_a, alice_kp, "alice", "alice", {})
    with pytest.raises(ValueError, match="empty"):
        seal(s_a, alice_kp, "", "bob", {})
    with pytest.raises(TypeError):
        seal(s_a, alice_kp, "alice", "bob", {"x": object()})
    assert (s_a.local_id, s_a.peer_id) == (None, None)
    assert seal(s_a, alice_kp, "carol", "dave", {}).sender == "carol"


def _rename(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def test_tampered_first_envelopes_are_rejected_and_leave_the_session_unbound():
    alice_kp, bob_kp, alice_bundle, _, s_a, s_b = _pair()
    env = seal(s_a, alice_kp, "alice", "bob", {"text": "hi"})
    data = env.to_bytes()
    before = s_b.export_state()
    # The hub relabels who talks to whom: the ids are in the key derivation, so it cannot.
    for forged in (
        _rename(data, b"\x05alice", b"\x05alica"),
        _rename(data, b"\x03bob", b"\x03bib"),
        data[:-1] + bytes([data[-1] ^ 1]),
        data[:40] + bytes([data[40] ^ 0x10]) + data[41:],
    ):
        with pytest.raises((AuthenticationError, SignatureError, FormatError)):
            unseal(s_b, forged, alice_bundle)
        assert s_b.export_state() == before
        assert (s_b.local_id, s_b.peer_id) == (None, None)
    assert unseal(s_b, env, alice_bundle) == {"text": "hi"}
    assert (s_b.local_id, s_b.peer_id) == ("bob", "alice")
    # Bound now: a message labelled with other ids is refused before any key is derived.
    relabelled = perform_key_exchange(alice_kp, bob_kp.public_bundle())
    other = seal(relabelled, alice_kp, "alicia", "bob", {"text": "?"})
    with pytest.raises(IdentityError):
        unseal(s_b, other, alice_bundle)


def test_the_bundle_of_an_unbound_identity():
    kp = AgentKeyPair()
    bundle = kp.public_bundle()
    assert kp.agent_id is None and bundle["agent_id"] is None
    assert fingerprint_of(bundle) == kp.fingerprint == bundle["fingerprint"]
    with pytest.raises(IdentityError, match="no agent id"):
        verify_bundle(bundle)  # an agent or a hub must never take it for any id's bundle
    for forged in ({**bundle, "agent_id": "alice"}, {**bundle, "agent_id": ""}):
        with pytest.raises((SignatureError, FormatError)):
            fingerprint_of(forged)
    bound = AgentKeyPair.generate("alice").public_bundle()
    with pytest.raises(SignatureError):
        fingerprint_of({**bound, "agent_id": None})
    assert "None" in repr(kp)


def test_unseal_checks_the_sender_bundle_of_an_unbound_peer():
    alice_kp, _, alice_bundle, _, s_a, s_b = _pair()
    env = seal(s_a, alice_kp, "alice", "bob", {"n": 1})
    with pytest.raises(IdentityError):
        unseal(s_b, env, AgentKeyPair().public_bundle())
    with pytest.raises(IdentityError):
        unseal(s_b, env, AgentKeyPair.generate("alice").public_bundle())
    assert (s_b.local_id, s_b.peer_id) == (None, None)
    assert unseal(s_b, env, alice_bundle) == {"n": 1}
    assert unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"n": 2}), alice_bundle) == {"n": 2}


def test_an_unbound_identity_with_a_bound_one():
    alice_kp, bob_kp = AgentKeyPair.generate("alice"), AgentKeyPair()
    s_a = perform_key_exchange(alice_kp, bob_kp.public_bundle())
    s_b = perform_key_exchange(bob_kp, alice_kp.public_bundle())
    assert (s_a.local_id, s_a.peer_id, s_b.local_id, s_b.peer_id) == ("alice", None, None, "alice")
    with pytest.raises(IdentityError, match="sender_id"):
        seal(s_a, alice_kp, "mallory", "bob", {})
    assert s_a.peer_id is None
    env = seal(s_b, bob_kp, "bob", "alice", {"n": 1})
    assert unseal(s_a, env, bob_kp.public_bundle()) == {"n": 1}
    assert unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"n": 2}), alice_kp.public_bundle()) == {
        "n": 2
    }


def test_save_load_and_export_of_an_unbound_identity(tmp_path):
    alice_kp, bob_kp, alice_bundle, bob_bundle, s_a, s_b = _pair()
    path = tmp_path / "anon.key"
    alice_kp.save(path)
    loaded = AgentKeyPair.load(path)
    assert loaded.agent_id is None and loaded.fingerprint == alice_kp.fingerprint
    assert loaded.public_bundle() == alice_bundle
    assert AgentKeyPair.from_bytes(alice_kp.to_bytes("pw"), "pw").agent_id is None
    unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"n": 1}), alice_bundle)
    queued = seal(s_a, alice_kp, "alice", "bob", {"n": 2})
    restored = CryptoSession.import_state(bob_kp, s_b.export_state())
    assert (restored.local_id, restored.peer_id) == ("bob", "alice")
    assert unseal(restored, queued, alice_bundle) == {"n": 2}
    fresh = CryptoSession.import_state(
        alice_kp, perform_key_exchange(alice_kp, bob_bundle).export_state()
    )
    assert (fresh.local_id, fresh.peer_id) == (None, None)


def test_an_agent_refuses_an_identity_without_its_id(tmp_path):
    with pytest.raises(ValueError, match="keypair belongs to agent None"):
        Agent("alice", keypair=AgentKeyPair())
    path = tmp_path / "anon.key"
    AgentKeyPair().save(path)
    with pytest.raises(ValueError, match="belongs to agent None"):
        Agent("alice", keypair_path=path)
