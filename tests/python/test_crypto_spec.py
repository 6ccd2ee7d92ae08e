"""Spec section 6, exactly as written there, plus the low-level API around it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from agentmesh.crypto import (
    AgentKeyPair,
    AuthenticationError,
    CryptoError,
    Envelope,
    FormatError,
    IdentityError,
    KeyFileError,
    ReplayError,
    SignatureError,
    VersionError,
    fingerprint_of,
    perform_key_exchange,
    seal,
    unseal,
    verify_bundle,
    verify_registration,
)


@pytest.fixture
def kps():
    alice_kp = AgentKeyPair.generate("alice")
    bob_kp = AgentKeyPair.generate("bob")
    return alice_kp, bob_kp, alice_kp.public_bundle(), bob_kp.public_bundle()


def test_spec_section_6_sequence_as_written(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    env = seal(s_a, alice_kp, "alice", "bob", {"text": "hi"})
    assert unseal(s_b, env, alice_bundle) == {"text": "hi"}


@pytest.mark.parametrize("deniable", [False, True])
@pytest.mark.parametrize("alice_first", [True, False])
def test_both_sides_may_seal_first_in_either_order(kps, alice_first, deniable):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle, deniable=deniable)
    s_b = perform_key_exchange(bob_kp, alice_bundle, deniable=deniable)
    env_a = seal(s_a, alice_kp, "alice", "bob", {"text": "from alice"})
    env_b = seal(s_b, bob_kp, "bob", "alice", {"text": "from bob"})
    if alice_first:
        assert unseal(s_b, env_a, alice_bundle) == {"text": "from alice"}
        assert unseal(s_a, env_b, bob_bundle) == {"text": "from bob"}
    else:
        assert unseal(s_a, env_b, bob_bundle) == {"text": "from bob"}
        assert unseal(s_b, env_a, alice_bundle) == {"text": "from alice"}
    for i in range(3):
        assert unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"i": i}), alice_bundle) == {"i": i}
        assert unseal(s_a, seal(s_b, bob_kp, "bob", "alice", {"j": i}), bob_bundle) == {"j": i}
    assert s_a.established and s_b.established


def test_json_types_are_preserved(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    payload = {
        "text": 'é 😀 \u0000 "quoted" \\',
        "int": -(2**63),
        "big": 2**64 - 1,
        "float": 0.1,
        "exp": 1e300,
        "bool": True,
        "none": None,
        "list": [1, [2, [3, {"deep": "x"}]]],
        "empty": {},
        "order": {"z": 1, "a": 2, "m": 3},
    }
    out = unseal(s_b, seal(s_a, alice_kp, "alice", "bob", payload), alice_bundle)
    assert out == payload
    assert list(out["order"]) == ["z", "a", "m"]
    assert json.dumps(out, sort_keys=True) == json.dumps(payload, sort_keys=True)
    tup = unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"t": (1, 2)}), alice_bundle)
    assert tup == {"t": [1, 2]}


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"when": object()}, 'payload["when"]'),
        ({"a": [1, {2, 3}]}, 'payload["a"][1]'),
        ({"m": memoryview(b"bytes")}, "memoryview"),
        ({1: "int key"}, "dict keys must be str"),
        ({"nan": float("nan")}, "NaN"),
        ({"huge": 2**70}, "64 bits"),
    ],
)
def test_unserialisable_payload_is_a_type_error_naming_it_and_changes_nothing(kps, payload, named):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    first = seal(s_a, alice_kp, "alice", "bob", {"n": 1})
    before = s_a.export_state()
    with pytest.raises(TypeError, match=named.replace("[", r"\[").replace("]", r"\]")):
        seal(s_a, alice_kp, "alice", "bob", payload)
    assert s_a.export_state() == before
    assert unseal(s_b, first, alice_bundle) == {"n": 1}


def test_payload_must_be_a_dict(kps):
    alice_kp, _, _, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    with pytest.raises(TypeError, match="payload must be a dict"):
        s_a.seal(["not", "a", "dict"])


def test_seal_refuses_ids_or_keys_that_are_not_the_sessions(kps):
    alice_kp, bob_kp, _, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    with pytest.raises(IdentityError, match="sender_id"):
        seal(s_a, alice_kp, "mallory", "bob", {})
    with pytest.raises(IdentityError, match="recipient_id"):
        seal(s_a, alice_kp, "alice", "carol", {})
    with pytest.raises(IdentityError, match="sender_keypair"):
        seal(s_a, bob_kp, "alice", "bob", {})


def test_unseal_with_the_wrong_senders_bundle_fails(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    carol_bundle = AgentKeyPair.generate("carol").public_bundle()
    impostor_bundle = AgentKeyPair.generate("alice").public_bundle()
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    env = seal(s_a, alice_kp, "alice", "bob", {"text": "hi"})
    with pytest.raises(IdentityError):
        unseal(s_b, env, carol_bundle)
    with pytest.raises(IdentityError):
        unseal(s_b, env, impostor_bundle)
    assert unseal(s_b, env, alice_bundle) == {"text": "hi"}


def test_envelope_round_trip_and_routing_fields(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    env = seal(s_a, alice_kp, "alice", "bob", {"text": "hi"})
    data = env.to_bytes()
    parsed = Envelope.from_bytes(data)
    assert parsed == env and parsed.to_bytes() == data and bytes(parsed) == data
    assert (parsed.sender, parsed.recipient) == ("alice", "bob")
    assert parsed.is_prekey and parsed.signed
    assert abs(parsed.timestamp - __import__("time").time() * 1000) < 60_000
    assert len(parsed.id) == 32
    assert b"hi" not in data
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    assert s_b.unseal(data) == {"text": "hi"}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", FormatError),
        (b"XX\x01", FormatError),
        (b"AM\x02" + bytes(200), VersionError),
        (b"AM\x01\x09" + bytes(200), FormatError),
        (bytes(range(256)) * 4, FormatError),
    ],
)
def test_malformed_envelopes_are_format_errors(data, error):
    with pytest.raises(error):
        Envelope.from_bytes(data)
    assert issubclass(error, CryptoError)


def test_tampered_envelope_is_rejected_and_session_unchanged(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"n": 0}), alice_bundle)
    env = seal(s_a, alice_kp, "alice", "bob", {"text": "genuine"})
    data = bytearray(env.to_bytes())
    before = s_b.export_state()
    for index in (len(data) - 1, len(data) - 20, 40):
        forged = bytearray(data)
        forged[index] ^= 0x01
        with pytest.raises(CryptoError):
            s_b.unseal(bytes(forged))
    assert s_b.export_state() == before
    assert s_b.unseal(env) == {"text": "genuine"}
    with pytest.raises(ReplayError):
        s_b.unseal(env)


def test_error_classes_for_each_rejection(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    d_a = perform_key_exchange(alice_kp, bob_bundle, deniable=True)
    unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {}), alice_bundle)
    env = s_a.seal({"x": 1})
    forged = bytearray(env.to_bytes())
    forged[-1] ^= 1
    with pytest.raises(AuthenticationError):
        s_b.unseal(bytes(forged))
    with pytest.raises(SignatureError, match="downgrade"):
        s_b.unseal(d_a.seal({"x": 2}))
    with pytest.raises(IdentityError):
        s_a.unseal(env)  # reflection: alice's own message back to alice


def test_bundle_is_self_certifying_and_json_safe(kps):
    alice_kp, _, alice_bundle, _ = kps
    assert json.loads(json.dumps(alice_bundle)) == alice_bundle
    assert verify_bundle(alice_bundle) == "alice"
    assert fingerprint_of(alice_bundle) == alice_kp.fingerprint
    for field in ("identity_key", "exchange_key", "signed_prekey", "signed_prekey_signature"):
        bad = dict(alice_bundle)
        raw = bytearray(__import__("base64").b64decode(bad[field]))
        raw[0] ^= 1
        bad[field] = __import__("base64").b64encode(bytes(raw)).decode()
        with pytest.raises(CryptoError):
            verify_bundle(bad)
    renamed = dict(alice_bundle, agent_id="mallory")
    with pytest.raises(SignatureError):
        verify_bundle(renamed)
    with pytest.raises(FormatError, match="missing"):
        verify_bundle({"agent_id": "x"})


def test_fingerprint_format(kps):
    alice_kp, *_ = kps
    import hashlib
    import re

    assert re.fullmatch(r"([0-9a-f]{4}:){7}[0-9a-f]{4}", alice_kp.fingerprint)
    digest = hashlib.sha256(alice_kp.identity_key).hexdigest()[:32]
    assert alice_kp.fingerprint.replace(":", "") == digest


def test_registration_signatures_are_bound_and_purpose_bound(kps):
    alice_kp, _, alice_bundle, bob_bundle = kps
    ctx = (b"h" * 16, b"c" * 32, b"n" * 32, b"t" * 32)
    sig = alice_kp.sign_registration(alice_bundle, *ctx)
    assert verify_registration(alice_bundle, sig, *ctx)
    for i in range(4):  # another hub id, challenge, client nonce, TLS certificate
        other = list(ctx)
        other[i] = b"x" * len(ctx[i])
        assert not verify_registration(alice_bundle, sig, *other)
    assert not verify_registration(alice_bundle, sig, *ctx[:3])  # TLS binding dropped
    assert not verify_registration(bob_bundle, sig, *ctx)
    with pytest.raises(ValueError, match="not this identity's bundle"):
        alice_kp.sign_registration(bob_bundle, *ctx)
    with pytest.raises(ValueError, match="client_nonce must be 32 bytes"):
        alice_kp.sign_registration(alice_bundle, b"h" * 16, b"c" * 32, b"short")
    # A prekey signature never passes as a registration signature (labelled by purpose).
    prekey_sig = __import__("base64").b64decode(alice_bundle["signed_prekey_signature"])
    assert not verify_registration(alice_bundle, prekey_sig, *ctx)


def test_key_file_save_load_mode_and_corruption(tmp_path, kps):
    alice_kp, *_ = kps
    path = tmp_path / "alice.key"
    alice_kp.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = AgentKeyPair.load(path)
    assert loaded.fingerprint == alice_kp.fingerprint
    assert loaded.public_bundle()["identity_key"] == alice_kp.public_bundle()["identity_key"]
    data = path.read_bytes()
    for corrupt in (
        data[:-1],
        data[: len(data) // 2],
        b"",
        data[:20] + bytes([data[20] ^ 1]) + data[21:],
    ):
        path.write_bytes(corrupt)
        with pytest.raises(KeyFileError):
            AgentKeyPair.load(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        AgentKeyPair.load(tmp_path / "missing.key")


def test_passphrase_protected_key_file(tmp_path, kps):
    alice_kp, *_ = kps
    path = tmp_path / "alice.key"
    alice_kp.save(path, passphrase="correct horse battery staple")
    assert (
        AgentKeyPair.load(path, passphrase="correct horse battery staple").fingerprint
        == alice_kp.fingerprint
    )
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        AgentKeyPair.load(path, passphrase="wrong")
    with pytest.raises(KeyFileError, match="passphrase is required"):
        AgentKeyPair.load(path)


def test_session_export_import_continues_the_session(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    from agentmesh.crypto import CryptoSession

    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    unseal(s_b, seal(s_a, alice_kp, "alice", "bob", {"n": 1}), alice_bundle)
    queued = s_a.seal({"n": 2})
    restored = CryptoSession.import_state(bob_kp, s_b.export_state())
    assert restored.unseal(queued) == {"n": 2}
    with pytest.raises(IdentityError):
        CryptoSession.import_state(alice_kp, s_b.export_state())
    with pytest.raises(KeyFileError):
        CryptoSession.import_state(bob_kp, s_b.export_state()[:-1])


def test_reprs_never_show_secrets(kps):
    alice_kp, _bob_kp, _alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    env = s_a.seal({"text": "secret text"})
    secret_file = alice_kp.to_bytes()
    ed_secret = secret_file[11:43]
    for obj in (alice_kp, s_a, env):
        text = repr(obj) + str(obj)
        assert ed_secret.hex() not in text and str(list(ed_secret[:8]))[1:-1] not in text
        assert "secret text" not in text
    assert "alice" in repr(alice_kp) and alice_kp.fingerprint in repr(alice_kp)


def test_one_time_prekeys_are_consumed(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    opks = bob_kp.generate_one_time_prekeys(3)
    bundle = dict(bob_bundle, one_time_prekey=opks[0])
    s_a = perform_key_exchange(alice_kp, bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    env = s_a.seal({"text": "with opk"})
    assert s_b.unseal(env) == {"text": "with opk"}
    assert opks[0]["id"] not in bob_kp.one_time_prekey_ids()
    fresh = perform_key_exchange(bob_kp, alice_bundle)
    with pytest.raises(ReplayError):  # bob remembers the set-up, before even looking at the key
        fresh.unseal(env)


def test_seal_many_and_unseal_many(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    payloads = [{"i": i, "text": "x" * i} for i in range(100)]
    envs = s_a.seal_many(payloads)
    assert s_b.unseal_many(envs) == payloads
    envs = s_a.seal_many(payloads[:5])
    forged = bytearray(envs[2].to_bytes())
    forged[-3] ^= 0x80
    results = s_b.unseal_many(
        [envs[0], bytes(forged), envs[1], envs[1], b"garbage", envs[3], envs[4]]
    )
    assert results[0] == payloads[0] and results[2] == payloads[1]
    assert isinstance(results[1], AuthenticationError)
    assert isinstance(results[3], ReplayError)
    assert isinstance(results[4], FormatError)
    assert results[5] == payloads[3] and results[6] == payloads[4]
    # The forged one's genuine twin still opens.
    assert s_b.unseal(envs[2]) == payloads[2]


def test_large_payload_round_trip(kps):
    alice_kp, bob_kp, alice_bundle, bob_bundle = kps
    s_a = perform_key_exchange(alice_kp, bob_bundle)
    s_b = perform_key_exchange(bob_kp, alice_bundle)
    big = {"text": "y" * (1 << 20)}
    env = s_a.seal(big)
    assert len(env.to_bytes()) > 1 << 20
    assert s_b.unseal(env) == big
