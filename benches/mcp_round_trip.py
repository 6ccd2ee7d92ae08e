"""An MCP tool call's round trip over agentmesh, next to the same call over the SDK's own
in-memory transport.

The same ``MCPServer`` with one tool (``echo``, a 64-character string in and out) is called with
``ClientSession.call_tool`` through three transports:

* **in-memory**: the SDK's ``InMemoryTransport`` (one process, memory streams, JSON-RPC models
  handed over without serialisation or encryption): the SDK's own cost of a call, the floor.
* **LocalHub**: ``agentmesh.mcp.serve`` / ``agentmesh.mcp.connect`` between two agents of one
  process on a ``LocalHub``: every JSON-RPC message serialised, sealed, signed, unsealed.
* **network hub**: the same between two processes through a hub process on 127.0.0.1 (its
  SQLite store, loopback TCP), the serving agent in its own process.

Each call is timed from ``call_tool`` to its return, after a warm-up; the three are interleaved
in rounds so that a noisy neighbour touches all of them alike. Ratios are of p50 against the
in-memory p50. The hub and the serving process are stopped by pid. Usage::

    python benches/mcp_round_trip.py              # table
    python benches/mcp_round_trip.py --json       # one JSON object on stdout
    python benches/mcp_round_trip.py --calls 2000 --rounds 5

Needs the MCP SDK (``pip install 'agentmesh[mcp]'``). The serving process is this script run with
``--serve PORT KEY`` (internal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession
from mcp.client._memory import InMemoryTransport
from mcp.server.mcpserver import MCPServer

import agentmesh.mcp
from agentmesh import Agent, LocalHub
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess

ARGUMENT = "x" * 64
NAMES = [
    "in-memory",
    "LocalHub",
    "network hub",
    "request/reply, LocalHub",
    "request/reply, network hub",
]


def make_app() -> MCPServer:
    app = MCPServer("bench")

    @app.tool()
    def echo(text: str) -> str:
        """Answer ``text``."""
        return text

    return app


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SessionFactory = Callable[[], AbstractAsyncContextManager[ClientSession]]


@asynccontextmanager
async def in_memory_session() -> AsyncIterator[ClientSession]:
    async with (
        InMemoryTransport(make_app()) as (read, write),
        ClientSession(read, write, read_timeout_seconds=30) as session,
    ):
        await session.initialize()
        yield session


async def time_calls(session: ClientSession, calls: int) -> list[float]:
    """Seconds per call, one call at a time."""
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await session.call_tool("echo", {"text": ARGUMENT})
        out.append(time.perf_counter() - started)
        if result.is_error:
            raise RuntimeError(f"the bench tool failed: {result.content}")
    return out


async def measure_all(
    sessions: dict[str, SessionFactory],
    references: dict[str, tuple[Agent, str]],
    calls: int,
    rounds: int,
) -> dict:
    samples: dict[str, list[float]] = {name: [] for name in [*sessions, *references]}
    for _ in range(rounds):
        for name, factory in sessions.items():
            async with factory() as session:
                await time_calls(session, max(20, calls // 10))  # warm-up
                samples[name] += await time_calls(session, calls)
        for name, (caller, peer) in references.items():
            await time_requests(caller, peer, max(20, calls // 10))  # warm-up
            samples[name] += await time_requests(caller, peer, calls)
    floor = statistics.median(samples["in-memory"])
    figures = {}
    for name, values in samples.items():
        p50 = statistics.median(values)
        figures[name] = {
            "p50_ms": round(p50 * 1e3, 3),
            "p99_ms": round(percentile(values, 0.99) * 1e3, 3),
            "calls": len(values),
            "ratio_to_in_memory": round(p50 / floor, 1),
        }
    return figures


def answer(msg: Any) -> None:
    """The reference: a plain agentmesh request answered with the same text."""
    msg.reply(text=msg.text)


async def time_requests(caller: Agent, peer: str, calls: int) -> list[float]:
    """Seconds per plain ``request`` of the same size (from a worker thread, as a sync agent's
    caller waits): the agentmesh round trip the MCP call rides on."""

    def run() -> list[float]:
        out = []
        for _ in range(calls):
            started = time.perf_counter()
            caller.request(peer, text=ARGUMENT, timeout=30)
            out.append(time.perf_counter() - started)
        return out

    return await asyncio.to_thread(run)


def serve_forever(port: int, key: str) -> None:
    """The serving process of the network figure: until stdin closes."""
    hub = NetworkHub("127.0.0.1", port)
    agent = Agent("bench-tools", hub=hub, keypair_path=key)
    agent.on_message(answer)
    with agentmesh.mcp.serve(agent, make_app(), allow=["bench-caller"]):
        print("serving", flush=True)
        sys.stdin.read()
    agent.close()
    hub.close()


def measure(calls: int = 500, rounds: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentmesh-mcp-bench-") as tmp:
        hub_process = HubProcess(Path(tmp) / "hub.sqlite3", 0, log_level="warning").start()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(hub_process.port), f"{tmp}/tools.key"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "serving":
                raise RuntimeError("the serving process did not start")
            local = LocalHub()
            local_tools = Agent("bench-tools", hub=local)
            local_tools.on_message(answer)
            local_caller = Agent("bench-caller", hub=local)
            network = NetworkHub("127.0.0.1", hub_process.port)
            network_caller = Agent("bench-caller", hub=network)
            with agentmesh.mcp.serve(local_tools, make_app(), allow=["bench-caller"]):
                figures = asyncio.run(
                    measure_all(
                        {
                            "in-memory": in_memory_session,
                            "LocalHub": lambda: agentmesh.mcp.connect(local_caller, "bench-tools"),
                            "network hub": lambda: agentmesh.mcp.connect(
                                network_caller, "bench-tools"
                            ),
                        },
                        {
                            "request/reply, LocalHub": (local_caller, "bench-tools"),
                            "request/reply, network hub": (network_caller, "bench-tools"),
                        },
                        calls,
                        rounds,
                    )
                )
            for agent in (local_caller, local_tools, network_caller):
                agent.close()
            network.close()
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            hub_process.stop()
    return {"argument_chars": len(ARGUMENT), "calls_per_round": calls, "rounds": rounds, **figures}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=500, help="timed calls per transport and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--serve", nargs=2, metavar=("PORT", "KEY"), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.serve:
        serve_forever(int(ns.serve[0]), ns.serve[1])
        return 0
    res = measure(ns.calls, ns.rounds)
    if ns.json:
        print(json.dumps(res))
        return 0
    print(f"MCP tools/call round trip, {ns.calls} x {ns.rounds} calls each, 64-character argument")
    print(f"{'transport':<28}{'p50 ms':>10}{'p99 ms':>10}{'x in-memory':>14}")
    for name in NAMES:
        fig = res[name]
        print(
            f"{name:<28}{fig['p50_ms']:>10.3f}{fig['p99_ms']:>10.3f}{fig['ratio_to_in_memory']:>14}"
        )
    print("(request/reply: a plain agentmesh request of the same size, for reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
