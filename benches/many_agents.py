"""Many agents in one process: does a message cost more when a process hosts hundreds of agents?

K sender agents live in one process and K receiver agents in another, all on one network hub
(a third process); sender ``s{i}`` sends to receiver ``r{i}``; 64-byte signed messages, 20,000
in all whatever K is (so each pair carries 20,000 / K). After a warm-up (every session set up,
every receiver has heard from its sender) the driver starts the senders and measures, until the
last message reaches its handler:

* the rate (messages / wall second);
* the CPU time per message of the receiving process (all its threads: ``time.process_time``),
  of the hub (``/proc/<pid>/stat``) and of the sending process;
* the receiving process's CPU per message by thread (its network thread, its receive
  workers), to tell which side of it grows with K.

The figure that matters is the ratio of K agents to one pair, measured in the same run: a
platform hosting 200 agents per process should not pay much more per message than one agent.

    python -m benches.many_agents                    # K = 1, 50, 200
    python -m benches.many_agents --ks 1,200 --repeat 3 --json

Peer processes are this module run with ``--peer senders|receivers`` (internal).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

HOST = "127.0.0.1"
PAYLOAD_BYTES = 64
TOTAL = 20_000
KS = (1, 50, 200)
WARMUP_PER_PAIR = 2
#: K agents per process may cost at most this multiple of one pair's CPU per message.
TARGET_CPU_RATIO = 1.5
#: Runs per K in ``python -m benches`` (interleaved; the report shows their medians).
REPORT_REPEAT = 5


def payload(i: int) -> dict[str, Any]:
    base = len(json.dumps({"i": i, "text": ""}, separators=(",", ":")))
    return {"i": i, "text": "x" * (PAYLOAD_BYTES - base)}


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _agents(prefix: str, k: int, port: int) -> list[Any]:
    from agentmesh import Agent
    from agentmesh.hubs import NetworkHub

    hub = NetworkHub(HOST, port)
    return [Agent(f"{prefix}{i}", hub=hub) for i in range(k)]


def _cpu_seconds_of(pid: int) -> float:
    return _cpu_seconds_in(f"/proc/{pid}/stat")


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process's threads, summed by name (the receive workers by role)."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        name = "receive workers" if t.name.startswith("agentmesh-receive") else t.name
        try:
            cpu = _cpu_seconds_in(f"/proc/self/task/{t.native_id}/stat")
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + cpu
    return out


def _cpu_seconds_in(stat_path: str) -> float:
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based), in clock ticks
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# peers


def _peer_receivers(ns: argparse.Namespace) -> None:
    agents = _agents("r", ns.k, ns.port)
    per = ns.total // ns.k
    expected = per + WARMUP_PER_PAIR
    lock = threading.Lock()
    counts = [0] * ns.k
    state = {"warm": 0, "done": 0, "out_of_order": 0, "rejected": 0}
    warm = threading.Event()
    done = threading.Event()
    marks: dict[str, float] = {}
    threads0: dict[str, float] = {}
    threads1: dict[str, float] = {}

    def handler_for(slot: int) -> Any:
        def handle(msg: Any) -> None:
            with lock:
                n = counts[slot]
                if msg.payload.get("i") != n:
                    state["out_of_order"] += 1
                n += 1
                counts[slot] = n
                if n == WARMUP_PER_PAIR:
                    state["warm"] += 1
                    if state["warm"] == ns.k:
                        marks["cpu0"] = time.process_time()
                        threads0.update(_thread_cpu_seconds())
                        marks["t0"] = time.perf_counter()
                        warm.set()
                if n == expected:
                    state["done"] += 1
                    if state["done"] == ns.k:
                        marks["cpu1"] = time.process_time()
                        threads1.update(_thread_cpu_seconds())
                        marks["t1"] = time.perf_counter()
                        done.set()

        return handle

    def rejected(exc: BaseException) -> None:
        with lock:
            state["rejected"] += 1

    for slot, agent in enumerate(agents):
        agent.on_message(handler_for(slot))
        agent.on_error(rejected)
    _emit({"ready": ns.k, "threads": threading.active_count()})
    if not warm.wait(ns.timeout):
        _emit({"error": "warm-up did not arrive", "counts": sum(counts)})
        return
    _emit({"warm": True})
    ok = done.wait(ns.timeout)
    result: dict[str, Any] = {
        "received": sum(counts) - WARMUP_PER_PAIR * ns.k,
        "complete": ok,
        "out_of_order": state["out_of_order"],
        "rejected": state["rejected"],
        "threads": threading.active_count(),
    }
    if ok:
        result["cpu_s"] = marks["cpu1"] - marks["cpu0"]
        result["t1"] = marks["t1"]
        result["thread_cpu_s"] = {
            name: cpu - threads0.get(name, 0.0) for name, cpu in threads1.items()
        }
    for agent in agents:
        agent.close(10)
    _emit(result)


def _peer_senders(ns: argparse.Namespace) -> None:
    agents = _agents("s", ns.k, ns.port)
    per = ns.total // ns.k
    for i, agent in enumerate(agents):
        for j in range(WARMUP_PER_PAIR):
            agent.send_payload(f"r{i}", payload(j))
    for agent in agents:
        agent.flush(ns.timeout)
    payloads = [payload(WARMUP_PER_PAIR + j) for j in range(per)]
    _emit({"ready": ns.k})
    sys.stdin.readline()  # the driver says go once every receiver is warm
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    # a platform's agents take turns: one message each, round after round
    pairs = [(agent.send_payload, f"r{i}") for i, agent in enumerate(agents)]
    for p in payloads:
        for send, to in pairs:
            send(to, p)
    for agent in agents:
        agent.flush(ns.timeout)
    cpu1 = time.process_time()
    _emit({"sent": per * ns.k, "t0": t0, "cpu_s": cpu1 - cpu0})
    for agent in agents:
        agent.close(10)


# --------------------------------------------------------------------------------------------
# the driver


def run_one(k: int, total: int, timeout: float) -> dict[str, Any]:
    """One measurement with a fresh hub: K pairs, ``total`` messages."""
    from agentmesh.testing import HubProcess

    from .network import Proc

    with tempfile.TemporaryDirectory(prefix="agentmesh-many-") as tmp:
        hub = HubProcess(os.path.join(tmp, "hub.sqlite3"), log_level="warning").start()
        receivers = senders = None
        try:
            base = [sys.executable, "-m", "benches.many_agents", "--port", str(hub.port)]
            common = ["--k", str(k), "--total", str(total), "--timeout", str(timeout)]
            receivers = Proc([*base, "--peer", "receivers", *common])
            receivers.wait_line(r'"ready"', timeout)
            senders = Proc([*base, "--peer", "senders", *common], stdin=True)
            receivers.wait_line(r'"warm"', timeout)
            senders.wait_line(r'"ready"', timeout)
            hub_cpu0 = _cpu_seconds_of(hub.pid)
            senders.say("go")
            rec = receivers.result(timeout)
            hub_cpu1 = _cpu_seconds_of(hub.pid)
            snd = senders.result(timeout)
        finally:
            for proc in (senders, receivers):
                if proc is not None:
                    proc.stop()
            hub.stop()
    if not rec.get("complete"):
        raise RuntimeError(f"K={k}: only {rec.get('received')} of {total} messages arrived")
    n = rec["received"]
    return {
        "k": k,
        "messages": n,
        "rate": n / (rec["t1"] - snd["t0"]),
        "receiver_us": rec["cpu_s"] / n * 1e6,
        "hub_us": (hub_cpu1 - hub_cpu0) / n * 1e6,
        "sender_us": snd["cpu_s"] / n * 1e6,
        "receiver_thread_us": {
            name: cpu / n * 1e6 for name, cpu in rec.get("thread_cpu_s", {}).items()
        },
        "receiver_threads": rec["threads"],
        "out_of_order": rec["out_of_order"],
        "rejected": rec["rejected"],
    }


def run(
    ks: tuple[int, ...] = KS,
    total: int = TOTAL,
    repeat: int = 1,
    timeout: float = 300.0,
    progress: Any = None,
) -> dict[str, Any]:
    """Every K ``repeat`` times, interleaved (K=1, K=50, ..., then again), with medians per K
    and each K's ratios against one pair."""
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    for _ in range(repeat):
        for k in ks:
            runs[k].append(run_one(k, total, timeout))
            if progress is not None:
                progress.step()
    table = []
    for k in ks:
        row: dict[str, Any] = {"k": k}
        for key in ("rate", "receiver_us", "hub_us", "sender_us"):
            row[key] = statistics.median(r[key] for r in runs[k])
        row["out_of_order"] = sum(r["out_of_order"] for r in runs[k])
        row["rejected"] = sum(r["rejected"] for r in runs[k])
        row["receiver_threads"] = max(r["receiver_threads"] for r in runs[k])
        names = {name for r in runs[k] for name in r["receiver_thread_us"]}
        row["receiver_thread_us"] = {
            name: statistics.median(r["receiver_thread_us"].get(name, 0.0) for r in runs[k])
            for name in sorted(names)
        }
        table.append(row)
    one = table[0]
    for row in table:
        for key in ("receiver_us", "hub_us", "sender_us"):
            row[key + "_ratio"] = row[key] / one[key]
    return {
        "total": total,
        "repeat": repeat,
        "target_cpu_ratio": TARGET_CPU_RATIO,
        "rows": table,
        "runs": runs,
    }


def format_table(res: dict[str, Any]) -> str:
    lines = [
        f"{'K pairs':>8} {'msg/s':>9} {'receiver µs/msg':>16} {'hub µs/msg':>13} "
        f"{'sender µs/msg':>14} {'threads':>8}  receiver by thread (µs/msg)",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['k']:>8} {r['rate']:>9.0f} {r['receiver_us']:>9.1f} "
            f"({r['receiver_us_ratio']:.2f}x)"
            f" {r['hub_us']:>6.1f} ({r['hub_us_ratio']:.2f}x) {r['sender_us']:>7.1f} "
            f"({r['sender_us_ratio']:.2f}x) {r['receiver_threads']:>8}  "
            + ", ".join(
                f"{name.removeprefix('agentmesh-')} {us:.1f}"
                for name, us in r["receiver_thread_us"].items()
                if us >= 0.05
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.many_agents", description=__doc__)
    p.add_argument("--peer", choices=("senders", "receivers"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--ks", default=",".join(map(str, KS)), help="agent pairs per run")
    p.add_argument("--total", type=int, default=TOTAL, help="messages per run, over all pairs")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ns = p.parse_args(argv)
    if ns.peer == "receivers":
        _peer_receivers(ns)
        return 0
    if ns.peer == "senders":
        _peer_senders(ns)
        return 0
    ks = tuple(int(k) for k in ns.ks.split(","))
    res = run(ks, ns.total, ns.repeat, ns.timeout)
    if ns.json:
        print(json.dumps(res))
    else:
        print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
