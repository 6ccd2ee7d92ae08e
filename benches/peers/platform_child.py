"""The same cases with Microsoft's ``agentmesh-platform`` ``SecureChannel`` (X3DH + Double
Ratchet in Python on cryptography/PyNaCl; raw bytes, no JSON, no per-message signature). It
also imports as ``agentmesh``, so it runs in its own environment:
``<that env's python> benches/peers/platform_child.py <case> <payload bytes> <ops> <batches>``.
Prints JSON: CPU nanoseconds per message of each batch (``ns``) and minor page faults per
message (``faults``)."""

from __future__ import annotations

import os
import sys

from agentmesh.encryption.channel import SecureChannel
from agentmesh.encryption.ratchet import EncryptedMessage
from agentmesh.encryption.x3dh import X3DHKeyManager
from nacl.signing import SigningKey

# The measurement is the other children's (benches/child_timing.py, standard library only).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from child_timing import measure


def _manager() -> X3DHKeyManager:
    sk = SigningKey.generate()
    vk = bytes(sk.verify_key)
    return X3DHKeyManager.from_ed25519_keys(bytes(sk) + vk, vk)


def main() -> None:
    case, size, ops, batches = sys.argv[1], *map(int, sys.argv[2:5])
    alice, bob = _manager(), _manager()
    bob.generate_signed_pre_key()
    a, establishment = SecureChannel.create_sender(alice, bob.get_public_bundle())
    b = SecureChannel.create_receiver(bob, establishment)
    payload = b"a" * size

    def one_way(src: SecureChannel, dst: SecureChannel) -> bytes:
        return dst.receive(EncryptedMessage.deserialize(src.send(payload).serialize()))

    one_way(a, b)
    one_way(b, a)

    def pingpong() -> None:
        one_way(a, b)
        one_way(b, a)

    def seal_unseal() -> None:
        one_way(a, b)

    # (seal_unseal and seal_unseal_bytes are the same here: SecureChannel carries raw bytes)
    op, per_call = (pingpong, 2) if case == "pingpong" else (seal_unseal, 1)
    measure(op, per_call, ops, batches)


if __name__ == "__main__":
    main()
