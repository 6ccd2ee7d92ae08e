"""agentmesh on NATS JetStream next to raw JetStream and next to agentmesh's own hub, in one run.

    python -m benches.nats_jetstream [--count 20000] [--rtt 300] [--size 64] [--nodes 1 3]
    python -m benches --only nats_jetstream      (the same, as a section of the report)

For each cluster size (``--nodes``; the cluster is started here with
:class:`agentmesh.nats_cluster.NatsCluster`, ``sync_interval: always``, and stopped by pid):

* one-way messages per second, sender process -> cluster -> receiver process: agentmesh
  Agents on NatsHub (the whole user path: seal and sign, ordered durable publish, pull,
  unseal, handler, acknowledgement) and raw nats-py publishing and consuming bytes of the
  envelope's size on a stream with the same settings and the same acknowledgements
  (``benches/peers/jetstream_peer.py``);
* one-way of raw nats-py again with a tuned client: agentmesh's own pull requests (the next
  batch asked for while one is handled, a batch's acknowledgements in one write) and
  publishes written as protocol commands, the techniques the NATS backend uses, so the two
  raw rows bracket what the client library costs;
* round trips (p50, p99) of agentmesh and of raw nats-py;

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
            tx = _peer(f"{kind}-send", urls, count, size, rx_id)  # (publishes to rx's subject)
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


#: The issue's bar: agentmesh's one-way rate over raw JetStream's, same settings.
TARGET_RATIO = 0.8
RAW, OURS, HUB = "raw JetStream", "agentmesh NatsHub", "agentmesh hub (1 process)"
RAW_TUNED = "raw JetStream, tuned client"


def run(
    count: int = 20000, rtt_count: int = 300, size: int = 64, nodes: tuple[int, ...] = (1, 3)
) -> dict[str, Any]:
    """Every figure of one run: ``rows`` of (label, nodes or None, msg/s, p50 us, p99 us)."""
    from agentmesh import NatsHub
    from agentmesh.nats_cluster import NatsCluster

    wire = envelope_size(size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-nats-") as tmp:
        for n in nodes:
            with NatsCluster(Path(tmp) / f"n{n}", nodes=n) as cluster:
                NatsHub(cluster.urls).close()  # the stream and buckets, checked
                asyncio.run(_raw_stream(cluster.urls, 3 if n > 1 else 1))
                for kind, label in (("js", RAW), ("am", OURS), ("js-tuned", RAW_TUNED)):
                    rate = one_way(kind, cluster.urls, size if kind == "am" else wire, count)
                    rtt = (
                        round_trip(kind, cluster.urls, size if kind == "am" else wire, rtt_count)
                        if kind != "js-tuned"
                        else {"p50": None, "p99": None}  # (one-way only)
                    )
                    rows.append({"label": label, "nodes": n, "rate": rate["rate"], **rtt})
        hub, port = start_hub(tmp)  # type: ignore[misc]
        try:
            rate = hub_one_way("hub", port, size, count, 300.0)
            rtt = ping_pong("hub", port, size, rtt_count, 300.0)
            rows.append(
                {"label": HUB, "nodes": None, "rate": rate["rate"]}
                | {k: rtt[k] / 1e3 for k in ("p50", "p99")}
            )
        finally:
            hub.stop()
    return {"payload": size, "envelope": wire, "count": count, "rtt_count": rtt_count,
            "rows": rows}


def ratios(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cluster size: agentmesh over raw JetStream, one-way rate and round trip p50."""
    out = []
    by = {(row["label"], row["nodes"]): row for row in res["rows"]}
    for n in sorted({row["nodes"] for row in res["rows"] if row["nodes"] is not None}):
        raw, ours, tuned = by.get((RAW, n)), by.get((OURS, n)), by.get((RAW_TUNED, n))
        if raw and ours:
            out.append(
                {"nodes": n, "rate": ours["rate"] / raw["rate"], "p50": ours["p50"] / raw["p50"],
                 "ours": ours["rate"], "raw": raw["rate"],
                 "tuned": ours["rate"] / tuned["rate"] if tuned else None}
            )
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        f"payload {res['payload']} B text, envelope {res['envelope']} B; {res['count']} one-way, "
        f"{res['rtt_count']} round trips",
        f"{'':40} {'msg/s':>9} {'p50 us':>9} {'p99 us':>9}",
    ]
    for row in res["rows"]:
        label = row["label"] + (f", {row['nodes']} node(s)" if row["nodes"] else "")
        p50, p99 = (f"{row[k]:9.0f}" if row[k] is not None else f"{'-':>9}" for k in ("p50", "p99"))
        lines.append(f"{label:40} {row['rate']:9.0f} {p50} {p99}")
    for r in ratios(res):
        tuned = f", agentmesh/tuned raw {r['tuned']:.2f}" if r["tuned"] is not None else ""
        lines.append(
            f"{r['nodes']} node(s): agentmesh/raw one-way {r['rate']:.2f}{tuned}, "
            f"round trip p50 {r['p50']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.nats_jetstream", description=__doc__)
    p.add_argument("--count", type=int, default=20000, help="one-way messages per run")
    p.add_argument("--rtt", type=int, default=300, help="round trips per run")
    p.add_argument("--size", type=int, default=64, help="payload text bytes")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    ns = p.parse_args(argv)
    print(table(run(ns.count, ns.rtt, ns.size, tuple(ns.nodes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
