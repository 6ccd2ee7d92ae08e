"""The headline: what a user's program sees. Every measurement is a fresh process with default
settings (no allocator tuning, nothing warmed up by other benchmarks), the contenders' processes
interleaved round by round; medians over rounds of the per-process medians.

Cases: a 64 B ping-pong (every message changes direction, so every message turns the DH
ratchet: 2 X25519 and a key generation per message) and a 1 MiB seal+unseal (payload dict ->
wire bytes -> payload dict), once as text (``{"text": str}``, JSON) and once as binary
(``{"data": bytes}``, carried as raw bytes: the like-for-like comparison with a peer that
carries raw bytes). Contenders: agentmesh deniable and signed, and optionally

* ``AGENTMESH_PLATFORM_PYTHON``: the python of an environment with Microsoft's
  ``agentmesh-platform`` (its ``SecureChannel``; it also imports as ``agentmesh``, so it never
  shares an environment with this one): ``python -m venv /tmp/platform &&
  /tmp/platform/bin/pip install agentmesh-platform==3.7.0``;
* ``AGENTMESH_BASELINE_PYTHON``: the python of an environment with another agentmesh build
  (for before/after comparisons of a change).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from .harness import Progress, fmt_time

AM_DENIABLE = "agentmesh deniable"
AM_SIGNED = "agentmesh signed"
BASE_DENIABLE = "agentmesh deniable (baseline build)"
BASE_SIGNED = "agentmesh signed (baseline build)"
PLATFORM = "agentmesh-platform SecureChannel (unsigned)"
AM_SIGNED_KEEP = "agentmesh signed, keep_freed_memory() (opt-in)"
OBJECTS = "the message's two 1 MiB Python objects alone (no cryptography)"

PINGPONG = "pingpong 64 B"
BIG = "seal+unseal 1 MiB text"
BIG_BYTES = "seal+unseal 1 MiB bytes"

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
_CASES = {
    PINGPONG: ("pingpong", 64),
    BIG: ("seal_unseal", 1 << 20),
    BIG_BYTES: ("seal_unseal_bytes", 1 << 20),
}


# Rows about megabyte buffers only: the ping-pong does not run them.
_BIG_ONLY = (AM_SIGNED_KEEP, OBJECTS)


def _ops(case: str, quick: bool) -> tuple[int, int]:
    """(operations per batch, batches) of one child process."""
    if case == PINGPONG:
        return (100, 3) if quick else (200, 5)
    return (5, 3) if quick else (10, 5)  # (both 1 MiB cases)


def _contenders() -> tuple[dict[str, list[str]], list[str]]:
    """name -> command prefix (the case arguments follow), and notes on what is missing."""
    am = [sys.executable, os.path.join(_HERE, "fresh_child.py")]
    out = {AM_DENIABLE: [*am, "@case", "deniable"], AM_SIGNED: [*am, "@case", "signed"]}
    out[AM_SIGNED_KEEP] = [*am, "@case", "signed", "@keep"]
    out[OBJECTS] = [sys.executable, os.path.join(_HERE, "fresh_objects_child.py"), "@case"]
    notes = []
    base = os.environ.get("AGENTMESH_BASELINE_PYTHON")
    if base:
        child = os.path.join(_HERE, "fresh_child.py")
        out[BASE_DENIABLE] = [base, child, "@case", "deniable"]
        out[BASE_SIGNED] = [base, child, "@case", "signed"]
    platform = os.environ.get("AGENTMESH_PLATFORM_PYTHON")
    if platform:
        out[PLATFORM] = [platform, os.path.join(_HERE, "peers", "platform_child.py"), "@case"]
    else:
        notes.append(
            "agentmesh-platform not measured: set AGENTMESH_PLATFORM_PYTHON to the python of an "
            "environment where it is installed (benches/fresh.py)"
        )
    return out, notes


def _default_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PYTHONMALLOC")}
    env.pop("PYTHONPATH", None)
    return env


def _one(prefix: list[str], case: str, quick: bool) -> tuple[float, float]:
    """(CPU ns per message, minor page faults per message) of one fresh process."""
    kind, size = _CASES[case]
    ops, batches = _ops(case, quick)
    cmd = [a for p in prefix if p != "@keep" for a in ([kind] if p == "@case" else [p])]
    cmd += [str(size), str(ops), str(batches)] + (["keep"] if "@keep" in prefix else [])
    done = subprocess.run(
        cmd, env=_default_env(), cwd=_REPO, capture_output=True, text=True, timeout=300, check=True
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return statistics.median(got["ns"]), float(got["faults"])


def planned_steps(quick: bool) -> int:
    return _rounds(quick) * len(_CASES)


def _rounds(quick: bool) -> int:
    return 3 if quick else 7


def run(quick: bool, progress: Progress) -> dict[str, Any]:
    contenders, notes = _contenders()
    res: dict[str, Any] = {"rounds": _rounds(quick), "notes": notes, "cases": {}}
    names = list(contenders)
    for case in _CASES:
        samples: dict[str, list[float]] = {n: [] for n in names}
        faults: dict[str, list[float]] = {n: [] for n in names}
        failed: dict[str, str] = {}
        for r in range(_rounds(quick)):
            progress.describe(f"fresh processes: {case}")
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                if name in failed or (name in _BIG_ONLY and case == PINGPONG):
                    continue
                try:
                    ns, flt = _one(contenders[name], case, quick)
                    samples[name].append(ns)
                    faults[name].append(flt)
                except (subprocess.SubprocessError, ValueError, OSError) as e:
                    failed[name] = f"{type(e).__name__}: {e}"
            progress.step()
        res["cases"][case] = {
            n: {
                "median": statistics.median(v),
                "min": min(v),
                "max": max(v),
                "n": len(v),
                "faults_per_op": statistics.median(faults[n]),
            }
            for n, v in samples.items()
            if v
        }
        res["notes"] += [f"{n} failed on {case}: {why}" for n, why in failed.items()]
    return res


def _med(res: dict[str, Any], case: str, name: str) -> float:
    stat = (res.get("fresh") or {}).get("cases", {}).get(case, {}).get(name)
    return float(stat["median"]) if stat else float("nan")


def targets(res: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    """(what, ratio, bar, detail) of issue 16's bars; lower ratios are better."""
    out = []
    for name, bar in ((AM_DENIABLE, 0.75), (AM_SIGNED, 1.35)):
        ours, peer = _med(res, PINGPONG, name), _med(res, PINGPONG, PLATFORM)
        out.append(
            (
                f"fresh process: 64 B ping-pong per message, {name.split()[-1]}, vs "
                "agentmesh-platform",
                ours / peer,
                bar,
                f"{fmt_time(ours)} vs {fmt_time(peer)}",
            )
        )
    ours, peer = _med(res, BIG_BYTES, AM_SIGNED), _med(res, BIG_BYTES, PLATFORM)
    out.append(
        (
            "fresh process: 1 MiB (bytes) signed seal+unseal vs agentmesh-platform",
            ours / peer,
            0.5,
            f"{fmt_time(ours)} vs {fmt_time(peer)}",
        )
    )
    return out


def signed_big(res: dict[str, Any]) -> float:
    return _med(res, BIG_BYTES, AM_SIGNED)


def fresh_floor_target(res: dict[str, Any], raw_floor: float) -> tuple[str, float, float, str]:
    """(what, ratio, bar, detail): the 1 MiB bytes case against the raw floor plus the
    fresh-process cost of the two objects every seal+unseal hands out."""
    ours, floor = signed_big(res), raw_floor + objects_big(res)
    return (
        "fresh process: 1 MiB (bytes) signed seal+unseal within 1.25x the raw floor + its two "
        "1 MiB Python objects made in a fresh process",
        ours / floor,
        1.25,
        f"{fmt_time(ours)} vs {fmt_time(floor)}",
    )


def objects_big(res: dict[str, Any]) -> float:
    """The fresh-process cost of the two 1 MiB Python objects of the bytes case."""
    return _med(res, BIG_BYTES, OBJECTS)


def markdown(res: dict[str, Any], raw_floor: float) -> list[str]:
    """The section; ``raw_floor``: the in-process signed 1 MiB floor of the same run (NaN if
    the seal_unseal section did not run)."""
    fr = res.get("fresh")
    if not fr:
        return []
    names = (AM_DENIABLE, AM_SIGNED, BASE_DENIABLE, BASE_SIGNED, PLATFORM, AM_SIGNED_KEEP, OBJECTS)
    L = [
        "## What a user's process sees (headline)",
        "",
        "Each figure is a **fresh process with default settings** (glibc's malloc as it comes, "
        "no `GLIBC_TUNABLES`, nothing warmed up by other benchmarks), as a user's program runs, "
        "timed in the process's CPU time (so another process's burst on a shared machine stays "
        f"out): the contenders' processes interleaved, {fr['rounds']} rounds, median of the "
        "per-process medians (min..max over rounds). Ping-pong: alice and bob answer each "
        "other, so every message turns the DH ratchet. agentmesh carries a payload dict: "
        '`{"text": ...}` (JSON inside the envelope), or for the bytes case `{"data": bytes}` '
        "(raw bytes inside the envelope); agentmesh-platform's `SecureChannel` carries raw "
        "bytes in both 1 MiB cases and signs nothing. The opt-in row is agentmesh signed in a "
        "program that called `agentmesh.keep_freed_memory()` first (docs/agents.md). The last "
        "row is no contender: it makes "
        "only the two objects a 1 MiB seal+unseal hands the user and holds at once, the wire "
        "`bytes` (kept while they are unsealed) and the payload value that comes back (`str` "
        "or `bytes`), each by one copy, and drops them, in a fresh process like the others. "
        "Children: `benches/fresh_child.py`, `benches/peers/platform_child.py`, "
        "`benches/fresh_objects_child.py`.",
        "",
        "| contender | " + " | ".join(fr["cases"]) + " |",
        "|---|" + "---|" * len(fr["cases"]),
    ]
    for n in names:
        cells = []
        for case in fr["cases"]:
            s = fr["cases"][case].get(n)
            cells.append(
                f"{fmt_time(s['median'])} ({fmt_time(s['min'])}..{fmt_time(s['max'])})"
                if s
                else "-"
            )
        if any(c != "-" for c in cells):
            L.append(f"| {n} | " + " | ".join(cells) + " |")
    L.append("")
    for case in (BIG, BIG_BYTES):
        big = fr["cases"].get(case, {})
        if not big:
            continue
        L.append(
            f"Minor page faults per message, {case} (pages glibc gave back to the kernel and "
            "the kernel mapped and zeroed again; Python's `bytes` and `str` of a megabyte are "
            "allocated with glibc's malloc, which in a fresh process returns them between "
            "messages): " + ", ".join(f"{n} {s['faults_per_op']:.0f}" for n, s in big.items()) + "."
        )
        L.append("")
    L.extend(_fresh_floor(res, raw_floor))
    for note in fr.get("notes", []):
        L.append(f"- {note}")
    L.append("")
    return L


def _fresh_floor(res: dict[str, Any], raw_floor: float) -> list[str]:
    objects, ours = objects_big(res), signed_big(res)
    if objects != objects:
        return []
    flt = res["fresh"]["cases"][BIG_BYTES][OBJECTS]["faults_per_op"]
    text = (
        "**The floor of a fresh default process.** A seal+unseal hands the user two 1 MiB "
        "objects that are alive at the same time: the wire `bytes`, which the caller holds "
        "while it unseals them, and the payload value that comes back. Made alone, by one copy "
        f"each, they cost {fmt_time(objects)} per message in a fresh process ({flt:.0f} page "
        "faults, the bytes case): glibc's malloc raises its mmap threshold to the size of the "
        "first megabyte buffer it unmaps (a little over 1 MiB) and its trim threshold to twice "
        "that, and two such buffers freed together at the top of the heap, plus the 128 KiB "
        "it keeps there, exceed it, so they go back to the kernel at the end of every message "
        "and come back as fresh, zeroed pages in the next (one megabyte alive at a time would "
        "stay below it). No library can avoid that without changing the process's malloc "
        "settings, which agentmesh leaves to the application (docs/agents.md, *Binary "
        "values*)."
    )
    if raw_floor == raw_floor:
        floor = raw_floor + objects
        text += (
            f" So a fresh default process cannot go below the raw floor ({fmt_time(raw_floor)}, "
            f"warm Rust buffers, this run) plus those objects: {fmt_time(floor)}. agentmesh "
            f"signed, bytes case: {fmt_time(ours)}, {ours / floor:.2f}x that floor."
        )
    return [text, ""]
