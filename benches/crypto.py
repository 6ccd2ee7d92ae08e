# ruff: noqa: B023  (every closure here is used within the loop iteration that made it)
"""In-process sections: seal+unseal per payload size, batches, Agent/LocalHub, set-ups, and the
breakdown of where a message's time goes."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from . import harness as h
from .harness import Contender, Plan, Progress
from .peers import agentmesh_peer as am

# Contender names (the report refers to them).
AM_SIGNED = "agentmesh signed"
AM_DENIABLE = "agentmesh deniable"
AM_SIGNED_OBJ = "agentmesh signed (Envelope objects)"
AM_DENIABLE_OBJ = "agentmesh deniable (Envelope objects)"
CLASSIC = "classic (cryptography)"
NACL = "PyNaCl sign + Box"
MEGOLM = "vodozemac Megolm (signed)"
OLM = "vodozemac Olm (unsigned)"
MEGOLM_OBJ = "vodozemac Megolm (objects)"
OLM_OBJ = "vodozemac Olm (objects)"
FLOOR_SIGNED = "raw floor signed (Rust)"
FLOOR_DENIABLE = "raw floor deniable (Rust)"
CORE_SIGNED = "agentmesh core signed (Rust, no Python)"
CORE_DENIABLE = "agentmesh core deniable (Rust, no Python)"


def _check(name: str, got: Any, want: Any) -> None:
    if got != want:
        raise AssertionError(f"{name}: round trip returned something else than the payload")


def optional_peers() -> tuple[dict[str, Any], dict[str, str]]:
    """The comparison libraries that import, and a note for each that does not."""
    mods: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for key, modname in (
        ("classic", "benches.peers.classic"),
        ("nacl", "benches.peers.nacl_peer"),
        ("vodozemac", "benches.peers.vodozemac_peer"),
    ):
        try:
            mods[key] = __import__(modname, fromlist=["_"])
        except Exception as e:
            notes[key] = f"{type(e).__name__}: {e}"
    return mods, notes


def seal_unseal_contenders(size: int, mods: dict[str, Any]) -> list[Contender]:
    payload = h.payload_of(size)
    plen = h.json_len(payload)
    out: list[Contender] = []

    def add(name: str, fn: Any, note: str = "") -> None:
        _check(name, fn(), payload)
        out.append(Contender(name, op=fn, note=note))

    sig, den = am.AmPair(deniable=False), am.AmPair(deniable=True)
    add(AM_SIGNED, lambda: sig.seal_unseal(payload))
    add(AM_DENIABLE, lambda: den.seal_unseal(payload))
    if "classic" in mods:
        ca, cb = mods["classic"].pair()
        add(CLASSIC, lambda: cb.unseal(ca.seal(payload)))
    if "nacl" in mods:
        na, nb = mods["nacl"].pair()
        add(NACL, lambda: nb.unseal(na.seal(payload)))
    if "vodozemac" in mods:
        vz = mods["vodozemac"]
        meg, olm = vz.MegolmPair(), vz.OlmPair()
        add(MEGOLM, lambda: meg.seal_unseal(payload))
        add(OLM, lambda: olm.seal_unseal(payload))
        meg2, olm2 = vz.MegolmPair(), vz.OlmPair()
        add(MEGOLM_OBJ, lambda: meg2.seal_unseal_objects(payload))
        add(OLM_OBJ, lambda: olm2.seal_unseal_objects(payload))
    sig2, den2 = am.AmPair(deniable=False), am.AmPair(deniable=True)
    add(AM_SIGNED_OBJ, lambda: sig2.seal_unseal_objects(payload))
    add(AM_DENIABLE_OBJ, lambda: den2.seal_unseal_objects(payload))
    if am.has_floor():
        out.append(Contender(FLOOR_SIGNED, batch=lambda k: am.floor_ns(plen, k, True)))
        out.append(Contender(FLOOR_DENIABLE, batch=lambda k: am.floor_ns(plen, k, False)))
        out.append(Contender(CORE_SIGNED, batch=lambda k: am.core_ns(plen, k, True)))
        out.append(Contender(CORE_DENIABLE, batch=lambda k: am.core_ns(plen, k, False)))
    return out


def run_seal_unseal(plan: Plan, progress: Progress, mods: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for size in h.SIZES:
        cs = seal_unseal_contenders(size, mods)
        stats = h.measure(cs, plan, progress, f"seal+unseal {h.size_label(size)}")
        res[str(size)] = {k: v.to_json() for k, v in stats.items()}
    return res


# ---------------------------------------------------------------------------------------------
# Batches: seal_many / unseal_many (both cores) against single calls


def _batch_contenders(size: int, n: int, deniable: bool) -> list[Contender]:
    payload = h.payload_of(size)
    payloads = [payload] * n
    mode = "deniable" if deniable else "signed"
    pair_many, pair_single = am.AmPair(deniable), am.AmPair(deniable)
    seal_pair = am.AmPair(deniable)

    def timed_unseal(pair: am.AmPair, many: bool) -> Any:
        def batch(k: int) -> float:
            total = 0
            for _ in range(k):
                envs = pair.a.seal_many(payloads)
                t0 = time.perf_counter_ns()
                got = pair.b.unseal_many(envs) if many else [pair.b.unseal(e) for e in envs]
                total += time.perf_counter_ns() - t0
                if got[-1] != payload:
                    raise AssertionError("unseal_many returned something else than the payload")
            return total / k

        return batch

    def seal_single() -> None:
        for p in payloads:
            seal_pair.a.seal(p)

    return [
        Contender(f"{mode} unseal_many x{n}", batch=timed_unseal(pair_many, True), per_call=n),
        Contender(
            f"{mode} unseal x{n} (single calls)", batch=timed_unseal(pair_single, False), per_call=n
        ),
        Contender(f"{mode} seal_many x{n}", op=lambda: seal_pair.a.seal_many(payloads), per_call=n),
        Contender(f"{mode} seal x{n} (single calls)", op=seal_single, per_call=n),
    ]


BATCH_CASES = [(64, 256), (1024 * 1024, 16)]


def run_batches(plan: Plan, progress: Progress) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for size, n in BATCH_CASES:
        for deniable in (False, True):
            cs = _batch_contenders(size, n, deniable)
            mode = "deniable" if deniable else "signed"
            stats = h.measure(cs, plan, progress, f"batch {mode} {h.size_label(size)}")
            res[f"{mode}/{size}"] = {"n": n, "stats": {k: v.to_json() for k, v in stats.items()}}
    return res


# ---------------------------------------------------------------------------------------------
# Agent.send -> handler through LocalHub, against raw seal+unseal

LOCALHUB = "Agent.send -> handler (LocalHub)"


def run_localhub(plan: Plan, progress: Progress, sizes: list[int]) -> dict[str, Any]:
    layer = am.agent_layer()
    if isinstance(layer, str):
        return {"skipped": f"agentmesh.agent / agentmesh.hubs not importable ({layer})"}
    res: dict[str, Any] = {}
    for size in sizes:
        payload = h.payload_of(size)
        text = payload["text"]
        lh = am.LocalHubPair()
        before = lh.received
        lh.send(text)
        if lh.received != before + 1 or lh.last.payload != payload:
            return {"skipped": "LocalHub did not run the handler before send returned"}
        obj, wire = am.AmPair(False), am.AmPair(False)
        cs = [
            Contender(LOCALHUB, op=lambda: lh.send(text)),
            Contender(AM_SIGNED_OBJ, op=lambda: obj.seal_unseal_objects(payload)),
            Contender(AM_SIGNED, op=lambda: wire.seal_unseal(payload)),
        ]
        stats = h.measure(cs, plan, progress, f"LocalHub {h.size_label(size)}")
        res[str(size)] = {k: v.to_json() for k, v in stats.items()}
        lh.close()
    return res


# ---------------------------------------------------------------------------------------------
# Session set-ups per second


def run_setups(plan: Plan, progress: Progress, mods: dict[str, Any]) -> dict[str, Any]:
    from agentmesh.crypto import AgentKeyPair

    first = {"text": "hello"}
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    ab, bb = alice.public_bundle(), bob.public_bundle()
    cs = [
        Contender(AM_SIGNED, op=lambda: am.handshake(alice, bob, ab, bb, False)),
        Contender(AM_DENIABLE, op=lambda: am.handshake(alice, bob, ab, bb, True)),
    ]
    if "classic" in mods:
        classic = mods["classic"]
        ci, cj = classic.identities()

        def classic_setup() -> Any:
            a = classic.ClassicSession(ci, cj.public())
            b = classic.ClassicSession(cj, ci.public())
            return b.unseal(a.seal(first))

        cs.append(Contender(CLASSIC, op=classic_setup))
    if "nacl" in mods:
        nacl = mods["nacl"]
        ni, nj = nacl.identities()

        def nacl_setup() -> Any:
            a, b = nacl.NaclSession(ni, nj), nacl.NaclSession(nj, ni)
            return b.unseal(a.seal(first))

        cs.append(Contender(NACL, op=nacl_setup))
    if "vodozemac" in mods:
        vzp = mods["vodozemac"]
        import vodozemac

        va, vb = vodozemac.Account(), vodozemac.Account()
        cs.append(Contender(OLM, op=lambda: vzp.olm_setup(va, vb)))
        cs.append(Contender(MEGOLM, op=vzp.megolm_setup))
    for c in cs:
        c.run(1)
    stats = h.measure(cs, plan, progress, "session set-ups")
    return {k: v.to_json() for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------
# Where the time goes


def _median_of(fn: Any, k: int, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            fn()
        samples.append((time.perf_counter_ns() - t0) / k)
    return statistics.median(samples)


def run_breakdown(quick: bool) -> dict[str, Any]:
    """Primitive costs (Rust), the core's seal+unseal without Python, and the Python-side pieces
    (JSON of the payload in Python, Envelope.to_bytes/from_bytes) for 64 B and 1 MiB."""
    if not am.has_floor():
        return {"skipped": am.FLOOR_BUILD_HINT}
    from agentmesh.crypto import Envelope

    res: dict[str, Any] = {}
    reps = 5 if quick else 15
    for size in (64, 1024 * 1024):
        payload = h.payload_of(size)
        plen = h.json_len(payload)
        it = 2000 if size <= 1024 else 8
        if quick:
            it = max(2, it // 4)
        parts = [am.floor_parts(plen, it) for _ in range(reps)]
        med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        pair = am.AmPair(False)
        env = pair.a.seal(payload)
        data = env.to_bytes()
        text = json.dumps(payload)
        k = 2000 if size <= 1024 else 5
        py = {
            "json_dumps_payload": _median_of(lambda: json.dumps(payload), k, reps),
            "json_loads_payload": _median_of(lambda: json.loads(text), k, reps),
            "envelope_to_bytes": _median_of(env.to_bytes, k, reps),
            "envelope_from_bytes": _median_of(lambda: Envelope.from_bytes(data), k, reps),
            "bytes_to_str_decode": _median_of(lambda: data.decode("latin-1"), k, reps),
        }
        seal_only = am.AmPair(False)
        py["CryptoSession.seal (signed)"] = _median_of(lambda: seal_only.a.seal(payload), k, reps)
        res[str(size)] = {
            "minor_faults_per_op": _minor_faults(lambda: pair.seal_unseal(payload), k),
            "payload_json_len": plen,
            "primitives": med,
            "core_signed": statistics.median(am.core_ns(plen, it, True) for _ in range(reps)),
            "core_deniable": statistics.median(am.core_ns(plen, it, False) for _ in range(reps)),
            "floor_signed": statistics.median(am.floor_ns(plen, it, True) for _ in range(reps)),
            "floor_deniable": statistics.median(am.floor_ns(plen, it, False) for _ in range(reps)),
            "python": py,
        }
        if size > 1024 and not quick:
            res[str(size)]["allocator"] = allocator_effect(size)
            res[str(size)]["perf"] = perf_profile(size)
    return res


_PERF_CHILD = """
import sys
from benches.peers.agentmesh_peer import AmPair
p = AmPair(False)
payload = {"text": "a" * int(sys.argv[1])}
for _ in range(int(sys.argv[2])):
    p.seal_unseal(payload)
"""


def perf_profile(size: int, iterations: int = 300) -> dict[str, Any] | None:
    """Where a signed seal+unseal of ``size`` spends its time, by ``perf record`` of a child
    process with a warm heap (freed memory kept, so page faults do not hide the rest): the top
    symbols and their share of samples. None when perf is not available."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from .report import ALLOC_TUNABLES

    perf = shutil.which("perf")
    if perf is None:
        return None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GLIBC_TUNABLES=ALLOC_TUNABLES)
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        try:
            subprocess.run(
                [
                    perf,
                    "record",
                    "-q",
                    "-F",
                    "2000",
                    "-o",
                    data,
                    "--",
                    sys.executable,
                    "-c",
                    _PERF_CHILD,
                    str(size),
                    str(iterations),
                ],
                env=env,
                cwd=repo,
                capture_output=True,
                timeout=300,
                check=True,
            )
            out = subprocess.run(
                [
                    perf,
                    "report",
                    "-i",
                    data,
                    "--no-children",
                    "--sort",
                    "symbol",
                    "--stdio",
                    "--percent-limit",
                    "1",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
        except Exception:
            return None
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "%" not in line:
            continue
        pct, _, rest = line.partition("%")
        try:
            share = float(pct)
        except ValueError:
            continue
        sym = rest.split("]", 1)[-1].strip()
        rows.append({"symbol": sym[:90].strip(), "percent": share})
    return {"iterations": iterations, "top": rows[:12]} if rows else None


def _minor_faults(fn: Any, k: int) -> float:
    """Minor page faults per call (fresh pages the kernel had to map and zero)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return float("nan")
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(k):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / k


_CHILD = """
import json, statistics, sys, time
from benches.peers.agentmesh_peer import AmPair
from benches.peers import classic
payload = {"text": "a" * int(sys.argv[1])}
sig, den = AmPair(False), AmPair(True)
ca, cb = classic.pair()
out = {}
for name, fn, k in (("signed", lambda: sig.seal_unseal(payload), 10),
                    ("deniable", lambda: den.seal_unseal(payload), 10),
                    ("classic", lambda: cb.unseal(ca.seal(payload)), 2)):
    fn()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            fn()
        ts.append((time.perf_counter_ns() - t0) / k)
    out[name] = statistics.median(ts)
print(json.dumps(out))
"""


def allocator_effect(size: int, pairs: int = 3) -> dict[str, float] | None:
    """seal+unseal of ``size`` in child processes with glibc's default malloc settings and with
    freed memory kept (GLIBC_TUNABLES), alternating; medians. None off glibc Linux."""
    import os
    import subprocess
    import sys

    from .memory import heap_in_use
    from .report import ALLOC_TUNABLES

    if heap_in_use() is None:
        return None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs: dict[str, list[dict[str, float]]] = {"default": [], "tuned": []}
    for _ in range(pairs):
        for variant in ("default", "tuned"):
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
            if variant == "tuned":
                env["GLIBC_TUNABLES"] = ALLOC_TUNABLES
            else:
                env.pop("GLIBC_TUNABLES", None)
            try:
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(size)],
                    env=env,
                    cwd=repo,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                )
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            except Exception:
                return None
    res = {}
    for variant, rows in runs.items():
        for name in rows[0]:
            res[f"{name}_{variant}"] = statistics.median(r[name] for r in rows)
    return res
