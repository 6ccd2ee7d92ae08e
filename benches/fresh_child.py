"""One fresh process, default settings, one agentmesh case: ``python benches/fresh_child.py
<pingpong|seal_unseal|seal_unseal_bytes> <signed|deniable> <payload size> <ops per batch>
<batches> [keep]`` (``seal_unseal_bytes``: the payload is ``{"data": bytes}``, carried as
binary; the others ``{"text": str}``).
Prints JSON: CPU nanoseconds per message of each batch (``ns``) and minor page faults per
message (``faults``). Imports only the installed agentmesh, as a user's program does (no
benchmark helpers, no allocator settings; with ``keep``, the program opts in to
``agentmesh.keep_freed_memory()`` first)."""

from __future__ import annotations

import sys

from child_timing import measure

import agentmesh
from agentmesh.crypto import AgentKeyPair, perform_key_exchange


def main() -> None:
    case, mode, size, ops, batches = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    if sys.argv[6:] == ["keep"] and not agentmesh.keep_freed_memory():
        raise SystemExit("keep_freed_memory() changed nothing here (not glibc)")
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    a = perform_key_exchange(alice, bob.public_bundle(), deniable=mode == "deniable")
    b = perform_key_exchange(bob, alice.public_bundle(), deniable=mode == "deniable")
    b.unseal(a.seal({"text": "hello"}).to_bytes())
    a.unseal(b.seal({"text": "hello"}).to_bytes())
    payload: dict[str, object] = (
        {"data": b"a" * size} if case.endswith("_bytes") else {"text": "a" * size}
    )

    def pingpong() -> None:
        # Every message changes direction, so every message turns the DH ratchet.
        b.unseal(a.seal(payload).to_bytes())
        a.unseal(b.seal(payload).to_bytes())

    def seal_unseal() -> None:
        b.unseal(a.seal(payload).to_bytes())

    op, per_call = (pingpong, 2) if case == "pingpong" else (seal_unseal, 1)
    measure(op, per_call, ops, batches)


if __name__ == "__main__":
    main()
