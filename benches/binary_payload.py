"""1 MiB of binary data sealed and unsealed as a ``bytes`` value (raw, framed) against the same
data base64'd into a ``str`` (what a user had to do before binary payloads), signed and deniable.
Reports CPU time per message (median of batches), the envelope sizes, and the ratio.

    python -m benches.binary_payload [--size BYTES] [--ops N] [--batches N]

"as str + b64" adds what that user also pays: ``b64encode`` before sealing and ``b64decode``
after unsealing."""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import time
from collections.abc import Callable

from agentmesh.crypto import AgentKeyPair, perform_key_exchange


def _pair(deniable: bool) -> tuple:
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    a = perform_key_exchange(alice, bob.public_bundle(), deniable=deniable)
    b = perform_key_exchange(bob, alice.public_bundle(), deniable=deniable)
    b.unseal(a.seal({"text": "hello"}).to_bytes())
    a.unseal(b.seal({"text": "hello"}).to_bytes())
    return a, b


def _cpu_ns(op: Callable[[], None], ops: int, batches: int) -> float:
    op()
    per_batch = []
    for _ in range(batches):
        t0 = time.process_time_ns()
        for _ in range(ops):
            op()
        per_batch.append((time.process_time_ns() - t0) / ops)
    return statistics.median(per_batch)


def measure(size: int, ops: int, batches: int, deniable: bool) -> dict[str, float]:
    a, b = _pair(deniable)
    blob = os.urandom(size)
    as_text = base64.b64encode(blob).decode("ascii")

    def raw() -> None:
        assert b.unseal(a.seal({"data": blob}).to_bytes())["data"] is not None

    def text() -> None:
        assert b.unseal(a.seal({"data": as_text}).to_bytes())["data"] is not None

    def text_b64() -> None:
        got = b.unseal(a.seal({"data": base64.b64encode(blob).decode("ascii")}).to_bytes())
        assert len(base64.b64decode(got["data"])) == size

    out = {
        "bytes_ns": _cpu_ns(raw, ops, batches),
        "str_ns": _cpu_ns(text, ops, batches),
        "str_b64_ns": _cpu_ns(text_b64, ops, batches),
        "bytes_envelope": float(len(a.seal({"data": blob}).to_bytes())),
        "str_envelope": float(len(a.seal({"data": as_text}).to_bytes())),
    }
    out["ratio_str"] = out["str_ns"] / out["bytes_ns"]
    out["ratio_str_b64"] = out["str_b64_ns"] / out["bytes_ns"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--ops", type=int, default=10)
    parser.add_argument("--batches", type=int, default=7)
    args = parser.parse_args()
    for mode in ("signed", "deniable"):
        got = measure(args.size, args.ops, args.batches, deniable=mode == "deniable")
        print(json.dumps({"mode": mode, "size": args.size, **got}))
        print(
            f"{mode:8}: bytes {got['bytes_ns'] / 1e6:.3f} ms, str {got['str_ns'] / 1e6:.3f} ms "
            f"(x{got['ratio_str']:.2f}), str + b64 {got['str_b64_ns'] / 1e6:.3f} ms "
            f"(x{got['ratio_str_b64']:.2f}); envelope {got['bytes_envelope']:,.0f} B vs "
            f"{got['str_envelope']:,.0f} B"
        )


if __name__ == "__main__":
    main()
