"""The frozen succession vectors (tests/vectors/succession-v1.json) through the Python API.

The same file is checked byte for byte by rust/agentmesh-core/tests/succession.rs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agentmesh._native import follow_succession, sign_succession, verify_succession
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import IdentityError, SignatureError
from agentmesh.succession import successor_generation

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "succession-v1.json").read_text()
)
STATEMENTS = [bytes.fromhex(s["bytes"]) for s in VECTORS["statements"]]


def identity(i: int) -> AgentKeyPair:
    return AgentKeyPair.from_bytes(bytes.fromhex(VECTORS["identities"][i]["secret_file"]))


def key(i: int) -> bytes:
    return bytes.fromhex(VECTORS["identities"][i]["identity_key"])


def test_the_frozen_statements_verify() -> None:
    for i, (raw, meta) in enumerate(zip(STATEMENTS, VECTORS["statements"], strict=True)):
        s = verify_succession(raw)
        assert s["agent_id"] == VECTORS["agent_id"] == "alice"
        assert base64.b64decode(s["old_identity_key"]) == key(i)
        assert base64.b64decode(s["new_identity_key"]) == key(i + 1)
        assert (s["generation"], s["timestamp"]) == (meta["generation"], meta["timestamp"])
    assert bytes(identity(2).identity_key) == key(2)


def test_the_frozen_chain_is_followed_from_each_key_it_passes() -> None:
    assert follow_succession("alice", key(0), key(2), STATEMENTS) == 2
    assert follow_succession("alice", key(1), key(2), STATEMENTS) == 2
    with pytest.raises(IdentityError):
        follow_succession("bob", key(0), key(2), STATEMENTS)
    with pytest.raises(IdentityError):
        follow_succession("alice", key(2), key(1), STATEMENTS[:1])


def test_the_bundle_form_carries_the_chain() -> None:
    newest = identity(2)
    newest.set_succession(STATEMENTS)
    bundle = newest.public_bundle()
    assert [base64.b64decode(s) for s in bundle["succession"]] == STATEMENTS
    old_key = base64.b64encode(key(0)).decode()
    assert successor_generation("alice", old_key, bundle) == 2
    with pytest.raises(IdentityError):
        identity(1).set_succession(STATEMENTS)  # the chain does not end at that key


def test_signing_again_gives_the_frozen_bytes() -> None:
    # Ed25519 signatures are deterministic: the same keys, generation and time give the
    # same statement
    assert sign_succession(identity(0), identity(1), 1, VECTORS["statements"][0]["timestamp"]) == (
        STATEMENTS[0]
    )


def test_a_tampered_statement_is_refused() -> None:
    bad = bytearray(STATEMENTS[0])
    bad[-1] ^= 1
    with pytest.raises(SignatureError):
        verify_succession(bytes(bad))
