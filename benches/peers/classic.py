"""The classic design, written lean: what hand-rolled "encrypted agent messaging" libraries do.

Static X25519 between the two identities + HKDF-SHA256 -> one AES-256-GCM key for the whole
conversation (no ratchet, no forward secrecy), the payload as JSON inside a JSON message that
carries sender, recipient, timestamp and a random 96-bit nonce, an Ed25519 signature over that
JSON, the signature and ciphertext base64-encoded into a JSON envelope, and a set of seen nonces
for replay protection (it grows by one entry per message: that is the usual design, and the
memory section shows what it costs). Everything through pyca/``cryptography``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class ReplayError(Exception):
    pass


class Identity:
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.signing = Ed25519PrivateKey.generate()
        self.exchange = X25519PrivateKey.generate()

    def public(self) -> tuple[str, Ed25519PublicKey, X25519PublicKey]:
        return self.agent_id, self.signing.public_key(), self.exchange.public_key()


class ClassicSession:
    """One side of a conversation: ``seal(payload) -> bytes`` and ``unseal(bytes) -> payload``."""

    def __init__(self, me: Identity, peer: tuple[str, Ed25519PublicKey, X25519PublicKey]) -> None:
        peer_id, self.peer_signing, peer_exchange = peer
        self.me = me
        self.peer_id = peer_id
        shared = me.exchange.exchange(peer_exchange)
        ids = "|".join(sorted([me.agent_id, peer_id])).encode()
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"classic-v1|" + ids
        ).derive(shared)
        self.aead = AESGCM(key)
        self.seen: set[bytes] = set()

    def seal(self, payload: dict[str, Any]) -> bytes:
        nonce = os.urandom(12)
        message = json.dumps(
            {
                "sender": self.me.agent_id,
                "recipient": self.peer_id,
                "timestamp": int(time.time() * 1000),
                "nonce": base64.b64encode(nonce).decode(),
                "payload": payload,
            },
            separators=(",", ":"),
        ).encode()
        signature = self.me.signing.sign(message)
        ciphertext = self.aead.encrypt(nonce, message, self.me.agent_id.encode())
        return json.dumps(
            {
                "v": 1,
                "sender": self.me.agent_id,
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "signature": base64.b64encode(signature).decode(),
            },
            separators=(",", ":"),
        ).encode()

    def unseal(self, data: bytes) -> dict[str, Any]:
        env = json.loads(data)
        nonce = base64.b64decode(env["nonce"])
        if nonce in self.seen:
            raise ReplayError("nonce seen before")
        message = self.aead.decrypt(
            nonce, base64.b64decode(env["ciphertext"]), self.peer_id.encode()
        )
        self.peer_signing.verify(base64.b64decode(env["signature"]), message)
        inner = json.loads(message)
        if inner["sender"] != self.peer_id or inner["recipient"] != self.me.agent_id:
            raise ValueError("misrouted message")
        self.seen.add(nonce)
        return inner["payload"]


def pair() -> tuple[ClassicSession, ClassicSession]:
    """Two sides of one conversation, alice -> bob."""
    alice, bob = Identity("alice"), Identity("bob")
    return ClassicSession(alice, bob.public()), ClassicSession(bob, alice.public())


def identities() -> tuple[Identity, Identity]:
    return Identity("alice"), Identity("bob")
