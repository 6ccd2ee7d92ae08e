"""vodozemac (Matrix's Rust Olm/Megolm, PyPI package ``vodozemac``), through its Python bindings.

* Olm: a 1:1 Double Ratchet session (Curve25519, AES-256-CBC + HMAC-SHA-256). Messages are not
  signed, so it is compared with agentmesh's deniable mode. Wire form: ``to_parts()``.
* Megolm: a group session; every message carries an Ed25519 signature of the sender's session
  key, checked on decrypt, so it is compared with agentmesh's signed mode. Replay detection is
  left to the application (Matrix clients remember message indexes); it is not done here.
  Wire form: ``to_bytes()``.

The payload is JSON-encoded in Python on both sides (the bindings take bytes).
"""

from __future__ import annotations

import json
from typing import Any

import vodozemac as vz


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class OlmPair:
    """alice -> bob over an Olm session (established: bob has answered once)."""

    def __init__(self) -> None:
        self.alice, self.bob = vz.Account(), vz.Account()
        self.a, self.b = olm_setup(self.alice, self.bob)
        # Bob answers once so that alice's session is past the pre-key stage.
        self.a.decrypt(self.b.encrypt(b"{}"))
        self.b.decrypt(self.a.encrypt(b"{}"))

    def seal_unseal(self, payload: dict[str, Any]) -> Any:
        kind, body = self.a.encrypt(_dumps(payload)).to_parts()
        return json.loads(self.b.decrypt(vz.AnyOlmMessage.from_parts(kind, body)))

    def seal_unseal_objects(self, payload: dict[str, Any]) -> Any:
        return json.loads(self.b.decrypt(self.a.encrypt(_dumps(payload))))


def olm_setup(alice: vz.Account, bob: vz.Account) -> tuple[Any, Any]:
    """One Olm session set-up: bob publishes a one-time key, alice starts a session and sends a
    first (pre-key) message, bob creates the inbound session from it."""
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    bob.mark_keys_as_published()
    a = alice.create_outbound_session(bob.curve25519_key, otk)
    first = a.encrypt(b'{"text":"hello"}')
    b, plaintext = bob.create_inbound_session(alice.curve25519_key, first.to_pre_key())
    assert plaintext == b'{"text":"hello"}'
    return a, b


class MegolmPair:
    """alice's outbound group session and bob's inbound copy of it."""

    def __init__(self) -> None:
        self.out = vz.GroupSession()
        self.inb = vz.InboundGroupSession(self.out.session_key)

    def seal_unseal(self, payload: dict[str, Any]) -> Any:
        data = self.out.encrypt(_dumps(payload)).to_bytes()
        return json.loads(self.inb.decrypt(vz.MegolmMessage.from_bytes(data)).plaintext)

    def seal_unseal_objects(self, payload: dict[str, Any]) -> Any:
        return json.loads(self.inb.decrypt(self.out.encrypt(_dumps(payload))).plaintext)


def megolm_setup() -> Any:
    out = vz.GroupSession()
    inb = vz.InboundGroupSession(out.session_key)
    return json.loads(inb.decrypt(out.encrypt(b'{"text":"hello"}')).plaintext)


def olm_state_size(pair: OlmPair) -> int:
    """Bytes of both sides' pickled Olm session (an upper bound of the state it keeps)."""
    key = b"k" * 32
    return len(pair.a.pickle(key)) + len(pair.b.pickle(key))
