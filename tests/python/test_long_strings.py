"""Long strings are laid out straight into the envelope (not copied into the JSON text first):
the plaintext stays the compact JSON byte for byte, whatever the string holds and wherever it
sits, through every seal call (seal, seal_as, seal_many, groups) and the plaintext tool."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmesh import _native as native
from agentmesh import crypto as c

# Around the length from which a string that needs no escaping is left in place (json.rs).
SIZES = [16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 1 << 20]


def _texts(n: int) -> list[str]:
    return [
        "a" * n,
        "é" * (n // 2),  # not ASCII: Python's UTF-8 form of the string
        "a" * (n - 1) + '"',  # needs escaping only at the very end
        "\n" + "b" * (n - 1),  # ... and only at the start
    ]


def _payloads() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in SIZES:
        for text in _texts(n):
            out.append({"text": text})
    long = "z" * (1 << 18)
    out.append({"a": long, "b": [long, {"c": long}], "n": 1, "data": b"\x00\xff" * 9})
    out.append({"first": "q" * 20_000, "blob": b"x", "last": "r" * 20_000, "k": "short"})
    return out


def _compact(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("payload", _payloads(), ids=lambda p: f"{len(_compact_safe(p))}B")
def test_plaintext_and_round_trips_are_unchanged(payload: dict[str, Any]) -> None:
    if not any(isinstance(v, bytes) for v in payload.values()):
        assert native.payload_to_bytes(payload) == _compact(payload)
    assert native.payload_from_bytes(native.payload_to_bytes(payload)) == payload
    alice, bob = c.AgentKeyPair.generate("alice"), c.AgentKeyPair.generate("bob")
    a = c.perform_key_exchange(alice, bob.public_bundle())
    b = c.perform_key_exchange(bob, alice.public_bundle())
    assert b.unseal(a.seal(payload).to_bytes()) == payload
    assert b.unseal(a.seal_as(alice, "alice", "bob", payload).to_bytes()) == payload
    sealed = a.seal_many([payload, {"small": 1}, payload])
    assert b.unseal_many([e.to_bytes() for e in sealed]) == [payload, {"small": 1}, payload]


def _compact_safe(payload: dict[str, Any]) -> bytes:
    return _compact({k: v for k, v in payload.items() if not isinstance(v, bytes)})


def test_a_sealed_long_string_costs_no_more_than_its_json() -> None:
    # the envelope of a long string is exactly as long as that of its JSON copied as before
    alice, bob = c.AgentKeyPair.generate("alice"), c.AgentKeyPair.generate("bob")
    a = c.perform_key_exchange(alice, bob.public_bundle(), deniable=True)
    short, long = {"text": "s"}, {"text": "s" * (1 << 20)}
    assert len(a.seal(long)) - len(a.seal(short)) == (1 << 20) - 1
