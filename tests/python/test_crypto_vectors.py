"""The frozen protocol vectors (tests/vectors/protocol-v1.json) through the Python API.

The same file is checked byte-for-byte by rust/agentmesh-core/tests/vectors.rs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentmesh.crypto import (
    AgentKeyPair,
    CryptoSession,
    Envelope,
    bundle_from_bytes,
    fingerprint_of,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol-v1.json").read_text()
)


def identity(name: str) -> AgentKeyPair:
    return AgentKeyPair.from_bytes(bytes.fromhex(VECTORS["identities"][name]["secret_file"]))


def test_identities_and_bundles():
    for name, v in VECTORS["identities"].items():
        kp = identity(name)
        assert kp.agent_id == name
        assert kp.fingerprint == v["fingerprint"]
        assert kp.identity_key.hex() == v["identity_key"]
        bundle = bundle_from_bytes(bytes.fromhex(v["bundle_bytes"]))
        assert bundle["agent_id"] == name
        assert fingerprint_of(bundle) == v["fingerprint"]


MESSAGES = [
    pytest.param(conv["mode"], m, id=f"{conv['mode']}-{i}")
    for conv in VECTORS["conversations"]
    for i, m in enumerate(conv["messages"])
]


@pytest.mark.parametrize(("mode", "message"), MESSAGES)
def test_each_frozen_envelope_decodes_and_opens(mode, message):
    env = Envelope.from_bytes(bytes.fromhex(message["envelope"]))
    assert env.sender == message["sender"] and env.recipient == message["recipient"]
    assert env.timestamp == message["timestamp"]
    assert env.id == message["message_id"]
    assert env.is_prekey == (message["type"] == "prekey")
    assert env.signed == (mode == "signed")
    receiver = identity(message["recipient"])
    session = CryptoSession.import_state(receiver, bytes.fromhex(message["receiver_state_before"]))
    assert session.unseal(env) == json.loads(message["payload"])
    assert session.export_state().hex() == message["receiver_state_after"]
