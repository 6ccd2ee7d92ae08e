#!/usr/bin/env python3
"""NATS failure campaign: SIGKILL a leader of a three-node cluster again and again while
agents send, and count what was lost, handled twice, or handled out of a sender's order.

    python scripts/nats_campaign.py --kills 3 --envelopes 10000 --target stream
    python scripts/nats_campaign.py --kills 3 --envelopes 10000 --target consumer
    python scripts/nats_campaign.py --kills 1 --envelopes 10000 --target rolling

``--senders`` agents (in this process, on one NatsHub) send numbered envelopes to one
receiver; a killer thread waits for a share of the traffic, SIGKILLs the node leading the
inbox stream (``--target stream``) or the receiver's consumer (``--target consumer``),
restarts it, and does so ``--kills`` times. At the end every sender flushes (so everything
sent is acknowledged) and the receiver drains. Exit status 0 only if every sender's numbers
reached the handler exactly once and in order. The cluster runs on 127.0.0.1 and is stopped
by process id, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time

from agentmesh import Agent, NatsHub
from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_layout import NatsLayout


def leader_of(urls: list[str], target: str, receiver: str) -> str:
    async def ask() -> str:
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=5)
        try:
            layout = NatsLayout()
            js = nc.jetstream(timeout=5)
            for _ in range(300):
                try:
                    if target == "stream":
                        info = await js.stream_info(layout.stream)
                    else:
                        info = await js.consumer_info(layout.stream, layout.consumer(receiver))
                    if info.cluster is not None and info.cluster.leader:
                        return str(info.cluster.leader)
                except Exception:
                    pass
                await asyncio.sleep(0.1)
            raise RuntimeError(f"no {target} leader")
        finally:
            await nc.close()

    return asyncio.run(ask())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--envelopes", type=int, default=10_000, help="in all, over the senders")
    p.add_argument("--senders", type=int, default=4)
    p.add_argument(
        "--target",
        choices=["stream", "consumer", "rolling"],
        default="stream",
        help="SIGKILL the stream leader, the receiver's consumer leader, or restart every "
        "node in turn (SIGTERM, a rolling restart) at each step",
    )
    p.add_argument("--dir", help="cluster directory (default: a temporary one)")
    ns = p.parse_args()
    per_sender = ns.envelopes // ns.senders
    directory = ns.dir or tempfile.mkdtemp(prefix="agentmesh-nats-campaign-")
    with NatsCluster(directory, nodes=3) as cluster:
        hub = NatsHub(cluster.urls)
        got: dict[str, list[int]] = {}
        lock = threading.Lock()
        receiver = Agent("receiver", hub=hub)

        def on_message(msg) -> None:
            with lock:
                got.setdefault(msg.sender, []).append(msg.payload["n"])

        receiver.on_message(on_message)
        errors: list[BaseException] = []
        receiver.on_error(errors.append)
        senders = [Agent(f"sender{i}", hub=hub) for i in range(ns.senders)]
        sent = [0] * ns.senders

        def send(index: int) -> None:
            for n in range(per_sender):
                senders[index].send("receiver", n=n)
                sent[index] = n + 1
                if n % 20 == 0:
                    time.sleep(0.01)  # (steady traffic, so that the kills land while it flows)
            senders[index].flush(300)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(ns.senders)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for kill in range(ns.kills):
            share = (kill + 1) / (ns.kills + 1)
            total = per_sender * ns.senders
            while sum(map(len, got.values())) < total * share and time.monotonic() < started + 300:
                time.sleep(0.01)  # (the kills land while envelopes flow, spread over the run)
            handled = sum(map(len, got.values()))
            if ns.target == "rolling":
                print(f"step {kill + 1}: rolling restart, {handled} handled")
                for node in cluster.nodes:
                    node.stop()
                    cluster.restart(node)
                continue
            node = cluster.node(leader_of(cluster.urls, ns.target, "receiver"))
            print(f"kill {kill + 1}: SIGKILL {node.name} ({ns.target} leader), {handled} handled")
            node.kill()
            time.sleep(0.5)
            cluster.restart(node)
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 120
        while sum(len(v) for v in got.values()) < per_sender * ns.senders:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        ok = True
        for i in range(ns.senders):
            numbers = got.get(f"sender{i}", [])
            lost = per_sender - len(set(numbers))
            twice = len(numbers) - len(set(numbers))
            in_order = numbers == sorted(numbers)
            print(f"sender{i}: acknowledged {per_sender}, handled {len(numbers)}, lost {lost}, "
                  f"twice {twice}, in order {in_order}")  # fmt: skip
            ok = ok and lost == 0 and twice == 0 and in_order
        for error in errors[:10]:
            print(f"rejected: {type(error).__name__}: {error}")
        ok = ok and not errors
        print(f"{'PASS' if ok else 'FAIL'} in {elapsed:.1f}s; rejected {len(errors)}")
        for agent in (*senders, receiver):
            agent.close()
        hub.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
