"""No secret appears in any repr, log line or exception message."""

from __future__ import annotations

import base64
import logging

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.crypto import AgentKeyPair, CryptoError, perform_key_exchange
from agentmesh.testing import HostileHub


def secret_markers(kp: AgentKeyPair) -> list[str]:
    """Renderings (hex, base64, bytes repr, list of ints) of the identity's secret keys."""
    raw = kp.to_bytes()
    # Identity file body: magic(4) flag(1) id-len(1) id, then the Ed25519 and X25519 secrets.
    start = 6 + len(kp.agent_id.encode())
    secrets = [raw[start : start + 32], raw[start + 32 : start + 64]]
    markers = []
    for secret in secrets:
        markers += [
            secret.hex(),
            base64.b64encode(secret).decode(),
            repr(secret)[2:30],
            str(list(secret[:6]))[1:-1],
        ]
    return markers


def test_logs_exceptions_and_reprs_carry_no_secrets(caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    hub = HostileHub(seed=5, corrupt=0.3, replay=0.3, duplicate=0.2)
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key", log_level=logging.DEBUG)
    bob = Agent("bob", hub=hub, log_level=logging.DEBUG)
    errors: list[BaseException] = []
    bob.on_error(lambda exc, *_: errors.append(exc))
    for i in range(40):
        alice.send("bob", text=f"m{i}")
        bob.send("alice", text=f"r{i}")
    hub.release_all()
    assert errors, "the hostile hub should have caused rejections"
    kp = AgentKeyPair.load(tmp_path / "alice.key")
    texts = [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    texts += [str(e) + repr(e) for e in errors]
    texts += [repr(alice), repr(bob), str(alice.status()), repr(kp)]
    corpus = "\n".join(texts)
    for marker in secret_markers(kp):
        assert marker not in corpus
    alice.close()
    bob.close()


def test_crypto_error_messages_carry_no_key_material():
    a, b = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    s_a = perform_key_exchange(a, b.public_bundle())
    s_b = perform_key_exchange(b, a.public_bundle())
    env = bytearray(s_a.seal({"text": "secret payload"}).to_bytes())
    markers = secret_markers(a) + secret_markers(b) + ["secret payload"]
    messages = []
    for i in range(0, len(env), 3):
        forged = bytearray(env)
        forged[i] ^= 0x40
        with pytest.raises((CryptoError, ValueError)) as info:
            s_b.unseal(bytes(forged))
        messages.append(str(info.value) + repr(info.value))
    for bad in (b"", b"AMK\x01\x00" + bytes(40), a.to_bytes()[:-3]):
        with pytest.raises(CryptoError) as info:
            AgentKeyPair.from_bytes(bad)
        messages.append(str(info.value))
    with pytest.raises(CryptoError) as info:
        AgentKeyPair.from_bytes(a.to_bytes(passphrase="pw"), passphrase="wrong")
    messages.append(str(info.value))
    corpus = "\n".join(messages)
    for marker in markers:
        assert marker not in corpus


def test_local_quick_path_is_unaffected():
    hub = LocalHub()
    a, b = Agent("alice", hub=hub), Agent("bob", hub=hub)
    got = []
    b.on_message(got.append)
    a.send("bob", text="hi")
    assert got[0].text == "hi"
