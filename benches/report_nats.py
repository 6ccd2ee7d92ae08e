"""The report's section on agentmesh over NATS JetStream next to raw JetStream
(``benches.nats_jetstream``, where what each figure means is said)."""

from __future__ import annotations

from typing import Any

from . import nats_jetstream


def targets(res: dict[str, Any]) -> list[tuple[str, float, float, bool, str]]:
    """(what, ratio, bar, higher is better, detail): the one-way rate per cluster size."""
    section = res.get("nats_jetstream")
    if not section:
        return []
    return [
        (
            f"NatsHub one-way rate at least {nats_jetstream.TARGET_RATIO:g}x raw JetStream's "
            f"(nats-py, same settings), {r['nodes']} node(s)",
            r["rate"],
            nats_jetstream.TARGET_RATIO,
            True,
            f"{r['ours']:,.0f} vs {r['raw']:,.0f} msg/s",
        )
        for r in nats_jetstream.ratios(section)
    ]


def sections(res: dict[str, Any]) -> list[str]:
    section = res.get("nats_jetstream")
    if not section:
        return []
    lines = [
        "## agentmesh on NATS JetStream next to raw JetStream",
        "",
        f"One-way messages per second (sender process, cluster, receiver process; "
        f"{section['count']} messages) and round trips ({section['rtt_count']}), a "
        f"{section['payload']} B text payload ({section['envelope']} B envelope; raw JetStream "
        "carries bytes of that size with the same stream settings, acknowledgements and window), "
        "on clusters started for the run with `sync_interval: always` "
        "(`benches/nats_jetstream.py`). Raw JetStream uses nats-py's JetStream API; the tuned "
        "raw client (one-way only) uses the backend's own pull requests and directly written "
        "publishes, so agentmesh over it is agentmesh's own cost.",
        "",
        "| | one-way msg/s | round trip p50 µs | p99 µs |",
        "|---|---:|---:|---:|",
    ]
    for row in section["rows"]:
        label = row["label"] + (f", {row['nodes']} node(s)" if row["nodes"] else "")
        p50, p99 = (f"{row[k]:,.0f}" if row[k] is not None else "-" for k in ("p50", "p99"))
        lines.append(f"| {label} | {row['rate']:,.0f} | {p50} | {p99} |")
    lines.append("")
    for r in nats_jetstream.ratios(section):
        tuned = f", over the tuned raw client {r['tuned']:.2f}" if r["tuned"] is not None else ""
        lines.append(
            f"{r['nodes']} node(s): agentmesh/raw one-way {r['rate']:.2f}{tuned}, "
            f"round trip p50 {r['p50']:.2f}x.  "
        )
    lines.append("")
    return lines
