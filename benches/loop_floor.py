"""The floors under every network figure: what three Python processes on asyncio cost for a
round trip before agentmesh does anything, and what one thread hand-off costs (the agent layer
makes four per round trip: a send from the caller's thread to the network thread, a delivery
from the network thread to the worker, on each side).

A relay process forwards length-prefixed frames between two client processes; the pinger sends a
300-byte frame (about an envelope of a 64-byte payload), the echo client sends it back, and the
pinger times the round trip. Everything is ``asyncio.Protocol`` with TCP_NODELAY, on the loop
``agentmesh._eventloop`` picks, once with uvloop and once with the standard loop
(``AGENTMESH_EVENT_LOOP``). No crypto, no store, no threads: compare with
``benches/network_figures.py``. The hand-offs are timed in this process: a callback handed to a
uvloop loop running in another thread (``call_soon_threadsafe``), and an item handed to a
thread blocked in ``queue.SimpleQueue.get``::

    python benches/loop_floor.py [--round-trips 3000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the `benches` package importable
    sys.path.insert(0, str(REPO))

from benches.network import Proc  # noqa: E402

HOST = "127.0.0.1"
FRAME = b"x" * 300
LOOPS = ("uvloop", "asyncio")


class _Framed(asyncio.Protocol):
    """Splits the byte stream into length-prefixed frames; ``on_frame(self, body)``."""

    def __init__(self, on_frame: Any) -> None:
        self.on_frame = on_frame
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = struct.unpack_from(">I", self.buf)
            if len(self.buf) < 4 + n:
                return
            body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
            self.on_frame(self, body)

    def send(self, body: bytes) -> None:
        self.transport.write(struct.pack(">I", len(body)) + body)


async def _relay() -> None:
    """Forwards every frame to the other connection (the first frame of each is its name)."""
    conns: dict[bytes, _Framed] = {}
    names: dict[_Framed, bytes] = {}

    def on_frame(conn: _Framed, body: bytes) -> None:
        if conn not in names:
            names[conn] = body
            conns[body] = conn
            return
        conns[b"echo" if names[conn] == b"ping" else b"ping"].send(body)

    server = await asyncio.get_running_loop().create_server(lambda: _Framed(on_frame), HOST, 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


async def _client(name: str, port: int, round_trips: int) -> None:
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None]] = []

    def on_frame(conn: _Framed, body: bytes) -> None:
        if name == "echo":
            conn.send(body)
        elif waiter and not waiter[0].done():
            waiter[0].set_result(None)

    _, proto = await loop.create_connection(lambda: _Framed(on_frame), HOST, port)
    proto.send(name.encode())
    if name == "echo":
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.Event().wait()
    await asyncio.sleep(0.2)
    rtts = []
    for i in range(200 + round_trips):
        waiter[:] = [loop.create_future()]
        t0 = time.perf_counter()
        proto.send(FRAME)
        await waiter[0]
        if i >= 200:
            rtts.append(time.perf_counter() - t0)
    rtts.sort()
    print(
        json.dumps(
            {
                "p50_ms": rtts[len(rtts) // 2] * 1e3,
                "p99_ms": rtts[min(len(rtts) - 1, round(0.99 * (len(rtts) - 1)))] * 1e3,
            }
        ),
        flush=True,
    )


def _child(role: str, port: int, round_trips: int) -> None:
    from agentmesh._eventloop import new_event_loop

    loop = new_event_loop()
    coro = _relay() if role == "relay" else _client(role, port, round_trips)
    loop.run_until_complete(coro)


def measure(loop_kind: str, round_trips: int) -> dict[str, Any]:
    os.environ["AGENTMESH_EVENT_LOOP"] = loop_kind  # inherited by the three processes
    script = [sys.executable, str(Path(__file__).resolve())]
    procs: list[Proc] = []
    try:
        relay = Proc([*script, "--child", "relay"])
        procs.append(relay)
        port = int(json.loads(relay.wait_line(r'"port"', 30).string)["port"])
        echo = Proc([*script, "--child", "echo", "--port", str(port)])
        procs.append(echo)
        echo.wait_line(r'"ready"', 30)
        ping = Proc(
            [*script, "--child", "ping", "--port", str(port), "--round-trips", str(round_trips)]
        )
        procs.append(ping)
        return ping.result(120)
    finally:
        for p in reversed(procs):
            p.stop()


def handoffs(count: int) -> dict[str, float]:
    """One-way latency (µs, p50) of the agent layer's two kinds of thread hand-off."""
    import queue
    import statistics
    import threading

    from agentmesh._eventloop import new_event_loop

    back: queue.SimpleQueue[float] = queue.SimpleQueue()
    loop = new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    into_loop = []
    for _ in range(200 + count):
        t0 = time.perf_counter()
        loop.call_soon_threadsafe(lambda: back.put(time.perf_counter()))
        into_loop.append(back.get() - t0)
    loop.call_soon_threadsafe(loop.stop)

    work: queue.SimpleQueue[float | None] = queue.SimpleQueue()

    def worker() -> None:
        while work.get() is not None:
            back.put(time.perf_counter())

    threading.Thread(target=worker, daemon=True).start()
    to_worker = []
    for _ in range(200 + count):
        t0 = time.perf_counter()
        work.put(t0)
        to_worker.append(back.get() - t0)
    work.put(None)
    return {
        "into_loop_thread_us": statistics.median(into_loop[200:]) * 1e6,
        "to_worker_thread_us": statistics.median(to_worker[200:]) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--round-trips", type=int, default=3000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=("relay", "echo", "ping"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        _child(ns.child, ns.port, ns.round_trips)
        return 0
    results: dict[str, Any] = {kind: measure(kind, ns.round_trips) for kind in LOOPS}
    results["handoffs"] = handoffs(ns.round_trips)
    if ns.json:
        print(json.dumps(results))
        return 0
    print(f"trivial relay, three processes, {ns.round_trips} round trips of 300 bytes")
    for kind in LOOPS:
        r = results[kind]
        print(f"{kind:<8} p50 {r['p50_ms'] * 1e3:6.0f} µs   p99 {r['p99_ms'] * 1e3:6.0f} µs")
    h = results["handoffs"]
    print(
        f"thread hand-off (one way, p50): into a uvloop thread {h['into_loop_thread_us']:.0f} µs, "
        f"to a worker blocked on a queue {h['to_worker_thread_us']:.0f} µs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
