"""``agentmesh hub-stats``: the hub's metrics (``agentmesh-hub --metrics-port``) for a person.

It reads the Prometheus endpoint over HTTP (any address the operator gives; nothing leaves
the machine unless told to) and prints what matters at a glance: connections, agents, queues
(the longest ones by name), traffic, refusals and commit time.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from typing import Any

__all__ = ["add_parser", "run"]

DEFAULT_URL = "http://127.0.0.1:9464/metrics"


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hub-stats",
        parents=parents,
        help="print a running hub's metrics for a person",
        description="Read a hub's Prometheus endpoint (agentmesh-hub --metrics-port PORT) and "
        "print its connections, agents, queues, traffic, refusals and commit time.",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the metrics URL (default {DEFAULT_URL})")
    p.add_argument("--top", type=int, default=10, help="longest queues to list (default 10)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def run(args: argparse.Namespace) -> str:
    """The report (raises OSError / ValueError with the reason)."""
    if not args.url.startswith(("http://", "https://")):
        raise ValueError(f"--url {args.url!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.URLError as exc:
        raise OSError(f"cannot read the metrics at {args.url}: {exc.reason}") from None
    try:
        samples = _samples(text)
    except ImportError:
        raise ImportError(
            "hub-stats needs prometheus-client: pip install 'agentmesh[metrics]'"
        ) from None
    p = "agentmesh_hub_"
    if not any(name.startswith(p) for name in samples):
        raise ValueError(f"{args.url} serves no agentmesh hub metrics")

    def one(name: str) -> float:
        values = samples.get(p + name) or samples.get(p + name + "_total") or []
        return sum(v for _, v in values)

    commits, seconds = one("store_commits"), one("store_commit_seconds")
    lines = [
        f"connections        {one('connections'):>12,.0f}",
        f"agents registered  {one('agents_registered'):>12,.0f}",
        f"agents online      {one('agents_online'):>12,.0f}",
        f"queued envelopes   {one('queued_envelopes'):>12,.0f}  ({one('queued_bytes'):,.0f} bytes)",
        f"accepted           {one('accepted'):>12,.0f}  ({one('accepted_bytes'):,.0f} bytes)",
        f"delivered          {one('delivered'):>12,.0f}  ({one('delivered_bytes'):,.0f} bytes)",
        f"store commits      {commits:>12,.0f}"
        + (f"  ({seconds / commits * 1e3:.2f} ms each on average)" if commits else ""),
    ]
    refused = samples.get(p + "refused_total") or samples.get(p + "refused") or []
    if refused:
        parts = ", ".join(f"{labels.get('reason', '?')} {v:,.0f}" for labels, v in refused)
        lines.append(f"refused            {sum(v for _, v in refused):>12,.0f}  ({parts})")
    queues = sorted(samples.get(p + "agent_queued_envelopes", []), key=lambda s: -s[1])
    ages = {
        labels.get("agent"): age for labels, age in samples.get(p + "agent_queue_age_seconds", [])
    }
    if queues:
        lines.append("longest queues:                            envelopes   oldest waits")
        for labels, value in queues[: max(0, args.top)]:
            agent = labels.get("agent", "?")
            age = f"{ages[agent]:>12,.1f} s" if agent in ages else ""
            lines.append(f"  {agent:<40} {value:>10,.0f} {age}")
    return "\n".join(lines)
