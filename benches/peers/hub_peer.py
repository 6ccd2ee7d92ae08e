"""A peer process of the network section: an agentmesh Agent on a NetworkHub (127.0.0.1 only).

    python -m benches.peers.hub_peer receiver --port P --id rx --peer tx --count N
    python -m benches.peers.hub_peer sender   --port P --id tx --peer rx --count N --size S
    python -m benches.peers.hub_peer echo     --port P --id rx --peer tx --count N
    python -m benches.peers.hub_peer ping     --port P --id tx --peer rx --count N --size S

``receiver`` and ``echo`` print ``READY`` once registered. Every role prints one JSON line with
its results and exits 0, or exits 1 after ``--timeout`` seconds. Times are ``time.time()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"


def _agent(ns: argparse.Namespace) -> Any:
    from agentmesh.agent import Agent
    from agentmesh.hubs import NetworkHub

    return Agent(ns.id, hub=NetworkHub(HOST, ns.port))


def receiver(ns: argparse.Namespace, echo: bool) -> dict[str, Any]:
    agent = _agent(ns)
    done = threading.Event()
    times: list[float] = []
    errors: list[str] = []

    @agent.on_message
    def _on(msg: Any) -> None:
        times.append(time.time())
        if echo:
            agent.send(msg.sender, text=msg.text)
        if len(times) >= ns.count:
            done.set()

    @agent.on_error
    def _err(exc: Any) -> None:
        errors.append(repr(exc))

    print("READY", flush=True)
    ok = done.wait(ns.timeout)
    if echo:
        agent.flush(timeout=ns.timeout)
    agent.close()
    if not ok:
        raise SystemExit(f"timed out with {len(times)} of {ns.count} messages; errors {errors[:3]}")
    return {"count": len(times), "first": times[0], "last": times[-1], "errors": len(errors)}


def sender(ns: argparse.Namespace) -> dict[str, Any]:
    agent = _agent(ns)
    text = "a" * ns.size
    agent.connect(ns.peer)
    t0 = time.time()
    for _ in range(ns.count):
        agent.send(ns.peer, text=text)
    t_sent = time.time()
    agent.flush(timeout=ns.timeout)
    t_flushed = time.time()
    agent.close()
    return {"start": t0, "sent": t_sent, "flushed": t_flushed}


def ping(ns: argparse.Namespace) -> dict[str, Any]:
    agent = _agent(ns)
    text = "a" * ns.size
    got = threading.Event()

    @agent.on_message
    def _on(msg: Any) -> None:
        got.set()

    agent.connect(ns.peer)
    rtts: list[float] = []
    for i in range(ns.count + ns.warmup):
        got.clear()
        t0 = time.perf_counter()
        agent.send(ns.peer, text=text)
        if not got.wait(ns.timeout):
            raise SystemExit(f"no answer to ping {i}")
        if i >= ns.warmup:
            rtts.append(time.perf_counter() - t0)
    agent.close()
    return {"rtts": rtts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.peers.hub_peer")
    p.add_argument("role", choices=["receiver", "sender", "echo", "ping"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0)
    ns = p.parse_args(argv)
    watchdog = threading.Timer(ns.timeout + 30, lambda: __import__("os")._exit(3))
    watchdog.daemon = True
    watchdog.start()
    if ns.role in ("receiver", "echo"):
        out = receiver(ns, echo=ns.role == "echo")
    elif ns.role == "sender":
        out = sender(ns)
    else:
        out = ping(ns)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
