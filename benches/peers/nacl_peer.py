"""PyNaCl, the way its docs suggest: Ed25519 ``SigningKey.sign`` of the JSON, then ``Box``
(X25519 + XSalsa20-Poly1305, shared key precomputed once per pair) with a random nonce. Like the
classic design it keeps a set of seen nonces for replay protection. The wire form is the Box
output (nonce || ciphertext), bytes."""

from __future__ import annotations

import json
from typing import Any

from nacl.public import Box, PrivateKey
from nacl.signing import SigningKey


class ReplayError(Exception):
    pass


class Identity:
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.signing = SigningKey.generate()
        self.exchange = PrivateKey.generate()


class NaclSession:
    def __init__(self, me: Identity, peer: Identity) -> None:
        self.box = Box(me.exchange, peer.exchange.public_key)
        self.me = me
        self.peer_verify = peer.signing.verify_key
        self.seen: set[bytes] = set()

    def seal(self, payload: dict[str, Any]) -> bytes:
        signed = self.me.signing.sign(json.dumps(payload, separators=(",", ":")).encode())
        return bytes(self.box.encrypt(bytes(signed)))

    def unseal(self, data: bytes) -> dict[str, Any]:
        nonce = data[: Box.NONCE_SIZE]
        if nonce in self.seen:
            raise ReplayError("nonce seen before")
        signed = self.box.decrypt(data)
        message = self.peer_verify.verify(signed)
        self.seen.add(nonce)
        return json.loads(message)


def identities() -> tuple[Identity, Identity]:
    return Identity("alice"), Identity("bob")


def pair() -> tuple[NaclSession, NaclSession]:
    alice, bob = identities()
    return NaclSession(alice, bob), NaclSession(bob, alice)
