"""State per session after many messages: does it stay bounded?

Two measures for agentmesh, per session pair (both sides):
* ``state``: bytes of ``export_state()`` of both sessions: every key, counter, skipped message
  key and replay record the session keeps, serialised (exact, deterministic);
* ``heap``: the live footprint: bytes the extension's allocator (where the Rust core allocates:
  mimalloc, with a live-bytes count the extension keeps for this benchmark) gets back when the
  two sessions are dropped, after the messages and envelopes are gone and the garbage collector
  ran. Process-wide noise (thread pools, allocator caches) does not enter it.

Messages go alice -> bob in batches (``seal_many`` / ``unseal_many``), and bob answers once per
batch, so the DH ratchet turns all the time, as in a conversation. Deniable mode is used for the
long runs (a million signed messages would take a minute on two cores; the session state is the
same structure in both modes) and signed mode is run to a smaller count as a cross-check.
A second run drops 1% of the messages, so skipped message keys accumulate: they are bounded by
``MAX_SKIPPED_KEYS``.

Comparisons: the classic design's replay set (one entry per message received; measured as the
set plus its entries) and vodozemac Olm's pickled session size.
"""

from __future__ import annotations

import gc
import random
import sys
from typing import Any

from agentmesh import _native

from .harness import Progress
from .peers import agentmesh_peer as am


def heap_in_use() -> int:
    """Bytes the Rust core holds allocated (the extension's count). Only differences count."""
    return int(_native._bench_rust_heap())


def _settle() -> None:
    for _ in range(3):
        gc.collect()


def _warm_up() -> None:
    """One-time allocations of the process (rayon's thread pool, caches) happen here, not in a
    measured session."""
    heap_in_use()  # starts the extension's count before anything measured is allocated
    pair = am.AmPair(True)
    for _ in range(3):
        pair.b.unseal_many(pair.a.seal_many([{"text": "w"}] * 64))
        pair.a.unseal(pair.b.seal({"text": "w"}))
    del pair
    _settle()


def drive(pair: am.AmPair, count: int, loss: float, batch: int = 500, seed: int = 1234) -> None:
    """``count`` messages alice -> bob in batches, bob answering once per batch; with ``loss``,
    that fraction of messages is never delivered (never the last of a batch)."""
    rng = random.Random(seed)
    payloads = [{"text": "m" * 64}] * batch
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        envs = pair.a.seal_many(payloads[:n])
        if loss > 0:
            envs = [e for i, e in enumerate(envs) if i == n - 1 or rng.random() >= loss]
        results = pair.b.unseal_many(envs)
        for r in results:
            if not isinstance(r, dict):
                raise AssertionError(f"unseal_many rejected a message: {r!r}")
        pair.a.unseal(pair.b.seal({"text": "ack"}))  # the answer turns the DH ratchet
        sent += n


def run_agentmesh(
    checkpoints: list[int], deniable: bool, loss: float, progress: Progress
) -> list[dict[str, Any]]:
    """For each checkpoint, a fresh session pair driven to that many messages; then its state
    size, and the heap its two sessions free when they are dropped (their live footprint)."""
    _warm_up()
    out = []
    for count in checkpoints:
        pair = am.AmPair(deniable)
        drive(pair, count, loss)
        state = pair.state_size()
        _settle()
        before = heap_in_use()
        del pair.a, pair.b
        _settle()
        after = heap_in_use()
        out.append({"messages": count, "state": state, "heap": before - after})
        progress.step()
    return out


def run_classic(checkpoints: list[int], progress: Progress) -> list[dict[str, Any]] | str:
    try:
        from .peers import classic
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    a, b = classic.pair()
    payload = {"text": "m" * 64}
    sent, out = 0, []
    for target in checkpoints:
        while sent < target:
            b.unseal(a.seal(payload))
            sent += 1
        seen = b.seen
        size = sys.getsizeof(seen) + sum(sys.getsizeof(x) for x in seen)
        out.append({"messages": sent, "state": size})
        progress.step()
    return out


def run_olm(checkpoints: list[int], progress: Progress) -> list[dict[str, Any]] | str:
    try:
        from .peers import vodozemac_peer as vzp
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    pair = vzp.OlmPair()
    payload = b'{"text":"' + b"m" * 64 + b'"}'
    sent, out = 0, []
    for target in checkpoints:
        while sent < target:
            n = min(500, target - sent)
            for _ in range(n):
                pair.b.decrypt(pair.a.encrypt(payload))
            pair.a.decrypt(pair.b.encrypt(b"{}"))
            sent += n
        out.append({"messages": sent, "state": vzp.olm_state_size(pair)})
        progress.step()
    return out


def run(quick: bool, progress: Progress) -> dict[str, Any]:
    if quick:
        long_cp, signed_cp, cmp_cp = [1_000, 10_000], [1_000, 10_000], [1_000, 10_000]
    else:
        long_cp, signed_cp, cmp_cp = (
            [10_000, 100_000, 1_000_000],
            [10_000, 100_000],
            [10_000, 100_000],
        )
    progress.describe("memory: agentmesh (deniable)")
    res: dict[str, Any] = {
        "agentmesh_deniable": run_agentmesh(long_cp, True, 0.0, progress),
    }
    progress.describe("memory: agentmesh (signed)")
    res["agentmesh_signed"] = run_agentmesh(signed_cp, False, 0.0, progress)
    progress.describe("memory: agentmesh, 1% lost")
    res["agentmesh_deniable_loss"] = run_agentmesh(long_cp, True, 0.01, progress)
    progress.describe("memory: classic")
    res["classic"] = run_classic(cmp_cp, progress)
    progress.describe("memory: vodozemac Olm")
    res["olm"] = run_olm(cmp_cp, progress)
    return res


def planned_steps(quick: bool) -> int:
    return (2 + 2 + 2 + 2 + 2) if quick else (3 + 2 + 3 + 2 + 2)
