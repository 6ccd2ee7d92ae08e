"""agentmesh on NATS JetStream next to raw JetStream and next to agentmesh's own hub, in one run.

    python -m benches.nats_jetstream [--count 5000] [--rtt 300] [--size 64] [--nodes 1 3]

For each cluster size (``--nodes``; the cluster is started here with
:class:`agentmesh.nats_cluster.NatsCluster`, ``sync_interval: always``, and stopped by pid):

* one-way messages per second, sender process -> cluster -> receiver process: agentmesh
  Agents on NatsHub (the whole user path: seal and sign, ordered durable publish, pull,
  unseal, handler, acknowledgement) and raw nats-py publishing and consuming bytes of the
  envelope's size on a stream with the same settings and the same acknowledgements
  (``benches/peers/jetstream_peer.py``);
* round trips (p50, p99) of the same two;

and agentmesh's own network hub (one process, SQLite ``synchronous=FULL``) with the
``benches.network`` peers. Prints a table with the ratios; one run, numbers of this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .network import Proc, ping_pong, start_hub
from .network import one_way as hub_one_way
from .peers.jetstream_peer import RAW_STREAM, envelope_size


def _peer(role: str, urls: list[str], count: int, size: int, me: str, peer: str = "") -> Proc:
    cmd = [sys.executable, "-m", "benches.peers.jetstream_peer", role]
    cmd += ["--servers", ",".join(urls), "--id", me, "--count", str(count), "--size", str(size)]
    if peer:
        cmd += ["--peer", peer]
    return Proc(cmd)


def one_way(kind: str, urls: list[str], size: int, count: int) -> dict[str, Any]:
    rx_id = f"rx-{uuid.uuid4().hex[:8]}"
    tx_id = f"tx-{rx_id[3:]}"
    rx = _peer(f"{kind}-recv", urls, count, size, rx_id)
    try:
        rx.wait_line(r"^READY$", 60)
        if kind == "am":
            tx = _peer("am-send", urls, count, size, tx_id, rx_id)
        else:
            tx = _peer("js-send", urls, count, size, rx_id)  # (publishes to rx's subject)
        try:
            sent = tx.result(300)
        finally:
            tx.stop()
        got = rx.result(300)
    finally:
        rx.stop()
    return {"rate": count / max(got["last"] - sent["start"], 1e-9)}


def round_trip(kind: str, urls: list[str], size: int, count: int) -> dict[str, Any]:
    echo_id = f"echo-{uuid.uuid4().hex[:8]}"
    ping_id = f"ping-{echo_id[5:]}"
    echo = _peer(f"{kind}-echo", urls, count + 20, size, echo_id)
    try:
        echo.wait_line(r"^READY$", 60)
        pinger = _peer(f"{kind}-ping", urls, count, size, ping_id, echo_id)
        try:
            rtts = sorted(pinger.result(300)["rtts"])
        finally:
            pinger.stop()
        echo.result(300)
    finally:
        echo.stop()
    return {
        "p50": statistics.median(rtts) * 1e6,
        "p99": rtts[min(len(rtts) - 1, round(0.99 * (len(rtts) - 1)))] * 1e6,
    }


async def _raw_stream(urls: list[str], replicas: int) -> None:
    import nats
    from nats.js import api

    from agentmesh.nats_layout import DUPLICATE_WINDOW, MAX_ENVELOPE

    nc = await nats.connect(servers=urls, connect_timeout=10)
    try:
        await nc.jetstream(timeout=30).add_stream(
            api.StreamConfig(
                name=RAW_STREAM,
                subjects=["benchraw.*"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=replicas,
                discard=api.DiscardPolicy.NEW,
                discard_new_per_subject=True,
                max_msgs_per_subject=100_000,
                max_msg_size=MAX_ENVELOPE,
                duplicate_window=DUPLICATE_WINDOW,
            )
        )
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.nats_jetstream", description=__doc__)
    p.add_argument("--count", type=int, default=5000, help="one-way messages per run")
    p.add_argument("--rtt", type=int, default=300, help="round trips per run")
    p.add_argument("--size", type=int, default=64, help="payload text bytes")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    ns = p.parse_args(argv)
    from agentmesh import NatsHub
    from agentmesh.nats_cluster import NatsCluster

    wire = envelope_size(ns.size)
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-nats-") as tmp:
        for nodes in ns.nodes:
            with NatsCluster(Path(tmp) / f"n{nodes}", nodes=nodes) as cluster:
                NatsHub(cluster.urls).close()  # the stream and buckets, checked
                asyncio.run(_raw_stream(cluster.urls, 3 if nodes > 1 else 1))
                for kind, label in (("js", "raw JetStream"), ("am", "agentmesh NatsHub")):
                    size = wire if kind == "js" else ns.size
                    rate = one_way(kind, cluster.urls, size, ns.count)
                    rtt = round_trip(kind, cluster.urls, size, ns.rtt)
                    rows.append((f"{label}, {nodes} node(s)", rate, rtt))
        hub, port = start_hub(tmp)  # type: ignore[misc]
        try:
            rate = hub_one_way("hub", port, ns.size, ns.count, 300.0)
            rtt = ping_pong("hub", port, ns.size, ns.rtt, 300.0)
            rows.append(
                ("agentmesh hub (1 process)", rate, {k: rtt[k] / 1e3 for k in ("p50", "p99")})
            )
        finally:
            hub.stop()
    print(f"payload {ns.size} B text, envelope {wire} B; {ns.count} one-way, {ns.rtt} round trips")
    print(f"{'':34} {'msg/s':>9} {'p50 us':>9} {'p99 us':>9}")
    for label, rate, rtt in rows:
        print(f"{label:34} {rate['rate']:9.0f} {rtt['p50']:9.0f} {rtt['p99']:9.0f}")
    for nodes in ns.nodes:
        raw = next(r for r in rows if r[0] == f"raw JetStream, {nodes} node(s)")
        ours = next(r for r in rows if r[0] == f"agentmesh NatsHub, {nodes} node(s)")
        print(
            f"{nodes} node(s): agentmesh/raw one-way {ours[1]['rate'] / raw[1]['rate']:.2f}, "
            f"round trip p50 {ours[2]['p50'] / raw[2]['p50']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
