"""What the NATS authorization service costs: connecting, and sending, with and without it.

    python -m benches.nats_auth [--nodes 1 3] [--count 3000]

For each cluster size (started here with :class:`agentmesh.nats_cluster.NatsCluster`, stopped
by pid), with two services (``agentmesh nats-auth`` processes):

* connection time (median of 20): the service's own user (no callout), an agent's first
  connection (proof checked, id bound, consumer made), a later one (what a renewal costs), and
  the wall time of forty new agents connecting at once;
* one-way envelopes per second, alice to bob on one ``NatsHub``, with and without the service.

One run, numbers of this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from agentmesh import Agent, NatsHub
from agentmesh.crypto import AgentKeyPair
from agentmesh.nats_auth_client import agent_options
from agentmesh.nats_auth_config import AuthKeys, authorization_block
from agentmesh.nats_auth_process import AuthServiceProcess
from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_connection import connect
from agentmesh.nats_layout import NatsLayout


def _guarded(root: Path, nodes: int) -> tuple[AuthKeys, NatsCluster]:
    keys = AuthKeys.create(root / "keys")
    return keys, NatsCluster(root, nodes=nodes, authorization=authorization_block(keys))


def _services(cluster: NatsCluster, root: Path) -> list[AuthServiceProcess]:
    return [
        AuthServiceProcess(cluster.urls, root / "keys", root / f"auth{i}.log").start()
        for i in (1, 2)
    ]


def connection_times(nodes: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench-nats-auth-"))
    keys, cluster = _guarded(root, nodes)
    with cluster:
        services = _services(cluster, root)
        try:
            keypairs = [AgentKeyPair.generate(f"m{i}") for i in range(60)]
            seed = keys.service.seed.decode("ascii")

            async def timed(options: dict, guarded: bool) -> float:
                start = time.perf_counter()
                nc = await connect(
                    cluster.urls, connect_timeout=10, name="bench", options=options,
                    guarded=guarded,
                )
                elapsed = time.perf_counter() - start
                await nc.close()
                return elapsed

            async def run() -> str:
                layout = NatsLayout()
                base = [await timed({"nkeys_seed_str": seed}, False) for _ in range(20)]
                first = [await timed(agent_options(layout, k), True) for k in keypairs[:20]]
                again = [await timed(agent_options(layout, k), True) for k in keypairs[:20]]
                start = time.perf_counter()
                await asyncio.gather(
                    *(timed(agent_options(layout, k), True) for k in keypairs[20:])
                )
                crowd = time.perf_counter() - start

                def ms(xs: list[float]) -> str:
                    return f"{1000 * statistics.median(xs):.1f} ms"

                return (
                    f"{nodes} node(s): no callout {ms(base)}, agent's first connection "
                    f"{ms(first)}, later {ms(again)}, 40 new agents at once {crowd:.2f} s"
                )

            return asyncio.run(run())
        finally:
            for service in services:
                service.stop()


def one_way(nodes: int, count: int, auth: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="bench-nats-auth-"))
    cluster = _guarded(root, nodes)[1] if auth else NatsCluster(root, nodes=nodes)
    with cluster:
        services = _services(cluster, root) if auth else []
        try:
            hub = NatsHub(cluster.urls, auth=auth)
            got: list[int] = []
            alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
            bob.on_message(lambda msg: got.append(1))
            alice.send("bob", text="warm up")
            alice.flush(30)
            while not got:
                time.sleep(0.01)
            start = time.perf_counter()
            for _ in range(count):
                alice.send("bob", text="x" * 64)
            alice.flush(120)
            while len(got) < count + 1:
                time.sleep(0.005)
            rate = count / (time.perf_counter() - start)
            alice.close(), bob.close(), hub.close()
            return rate
        finally:
            for service in services:
                service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    for nodes in args.nodes:
        print(connection_times(nodes), flush=True)
        open_rate = one_way(nodes, args.count, auth=False)
        auth_rate = one_way(nodes, args.count, auth=True)
        print(
            f"{nodes} node(s): one-way {open_rate:,.0f} msg/s without the service, "
            f"{auth_rate:,.0f} with it ({auth_rate / open_rate:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
