"""The frozen binary payload vectors (tests/vectors/payload-v1.json, made and checked by
rust/agentmesh-core/tests/payload.rs) through the Python API: every framing encodes and decodes
to its payload, every malformed one is refused, the sealed example opens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentmesh import _native as native
from agentmesh import crypto as c
from agentmesh.errors import FormatError, VersionError

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "payload-v1.json").read_text()
)


def with_blobs(value: Any, blobs: list[bytes]) -> Any:
    """The payload a vector stands for: its JSON with each reference replaced by its blob."""
    if isinstance(value, dict):
        if set(value) == {VECTORS["reference_key"]}:
            return blobs[value[VECTORS["reference_key"]]]
        return {k: with_blobs(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [with_blobs(v, blobs) for v in value]
    return value


def payload_of(case: dict[str, Any]) -> Any:
    return with_blobs(json.loads(case["json"]), [bytes.fromhex(b) for b in case["blobs"]])


def test_the_reference_key_is_the_native_modules() -> None:
    assert VECTORS["reference_key"] == native.BYTES_REFERENCE_KEY


@pytest.mark.parametrize("case", VECTORS["framing"], ids=lambda case: case["name"])
def test_framing_vector_encodes_and_decodes(case) -> None:
    payload = payload_of(case)
    plaintext = bytes.fromhex(case["plaintext"])
    assert native.payload_to_bytes(payload) == plaintext
    assert native.payload_from_bytes(plaintext) == payload


@pytest.mark.parametrize("case", VECTORS["malformed"], ids=lambda case: case["name"])
def test_malformed_vector_is_refused(case) -> None:
    error = {"format": FormatError, "version": VersionError}[case["error"]]
    with pytest.raises(error, match="binary payload"):
        native.payload_from_bytes(bytes.fromhex(case["plaintext"]))


def test_sealed_vector_opens_to_its_payload() -> None:
    ex = VECTORS["sealed"]
    bob = c.AgentKeyPair.from_bytes(bytes.fromhex(ex["receiver_secret_file"]))
    session = c.CryptoSession.import_state(bob, bytes.fromhex(ex["receiver_state_before"]))
    assert session.unseal(bytes.fromhex(ex["envelope"])) == payload_of(ex)
