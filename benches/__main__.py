"""``python -m benches [--quick]``: run every section, print the targets, write the report."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from typing import Any

from . import (
    crypto,
    fresh,
    groups,
    harness,
    many_agents,
    memory,
    network,
    network_figures,
    report,
)

SECTIONS = [
    "fresh",
    "seal_unseal",
    "batches",
    "localhub",
    "setups",
    "breakdown",
    "memory",
    "network",
    "agents",
    "many_agents",
    "mcp",
    "groups",
    "nats_jetstream",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benches", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="about half a minute: fewer rounds and messages"
    )
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    p.add_argument("--out", default="docs/benchmarks.md", help="the Markdown report")
    p.add_argument("--img-dir", default="docs/img", help="where the PNG charts go")
    p.add_argument("--json", default=None, help="also save the raw results here")
    p.add_argument("--from-json", default=None, help="only rewrite the report from saved results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns = p.parse_args(argv)

    if ns.from_json:
        with open(ns.from_json) as f:
            res = json.load(f)
        for path in report.write(res, ns.out, ns.img_dir):
            print(f"wrote {path}")
        print(report.summary(res))
        return 0

    only = [s.strip() for s in ns.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    quick = ns.quick
    plan = harness.Plan(
        quick=quick, rounds=7 if quick else 25, batch_seconds=0.02 if quick else 0.05
    )
    lh_sizes = [64, 1024 * 1024] if quick else list(harness.SIZES)

    steps = 0
    steps += fresh.planned_steps(quick) if "fresh" in only else 0
    steps += len(harness.SIZES) * plan.rounds if "seal_unseal" in only else 0
    steps += len(crypto.BATCH_CASES) * 2 * plan.rounds if "batches" in only else 0
    steps += len(lh_sizes) * plan.rounds if "localhub" in only else 0
    steps += plan.rounds if "setups" in only else 0
    steps += 1 if "breakdown" in only else 0
    steps += memory.planned_steps(quick) if "memory" in only else 0
    steps += network.planned_steps(quick) if "network" in only else 0
    steps += 1 if "agents" in only else 0
    many_ks = (1, 200) if quick else many_agents.KS
    # (medians of interleaved runs: one run of hundreds of agents on a shared machine varies
    # by a quarter either way)
    many_repeat = 1 if quick else many_agents.REPORT_REPEAT
    steps += len(many_ks) * many_repeat if "many_agents" in only else 0
    steps += 1 if "mcp" in only else 0
    steps += 1 if "groups" in only else 0
    steps += 1 if "nats_jetstream" in only else 0

    command = "python -m benches" + ("".join(" " + shlex.quote(a) for a in argv) if argv else "")
    res: dict[str, Any] = {
        "command": command,
        "quick": quick,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": harness.machine_info(),
        "notes": [],
    }
    mods, notes = crypto.optional_peers()
    for k, v in notes.items():
        res["notes"].append(f"{k} not measured: {v}")
    from .peers import agentmesh_peer

    if not agentmesh_peer.has_floor():
        res["notes"].append(agentmesh_peer.FLOOR_BUILD_HINT)
        print(f"note: {agentmesh_peer.FLOOR_BUILD_HINT}", file=sys.stderr)

    t0 = time.time()
    progress = harness.Progress(steps, enabled=not ns.no_progress)
    try:
        if "fresh" in only:
            res["fresh"] = fresh.run(quick, progress)
        if "seal_unseal" in only:
            res["seal_unseal"] = crypto.run_seal_unseal(plan, progress, mods)
        if "batches" in only:
            res["batches"] = crypto.run_batches(plan, progress)
        if "localhub" in only:
            res["localhub"] = crypto.run_localhub(plan, progress, lh_sizes)
            if "skipped" in res["localhub"]:
                progress.step(len(lh_sizes) * plan.rounds)
        if "setups" in only:
            res["setups"] = crypto.run_setups(plan, progress, mods)
        if "breakdown" in only:
            progress.describe("breakdown")
            res["breakdown"] = crypto.run_breakdown(quick)
            progress.step()
        if "memory" in only:
            res["memory"] = memory.run(quick, progress)
        if "network" in only:
            res["network"] = network.run(quick, progress)
        if "agents" in only:
            progress.describe("agents over the network hub")
            res["agents"] = network_figures.run(quick)
            progress.step()
        if "mcp" in only:
            progress.describe("an MCP tool call over agentmesh")
            try:
                from . import mcp_round_trip

                res["mcp"] = mcp_round_trip.measure(100 if quick else 500, 2 if quick else 3)
            except ImportError as exc:  # (the mcp extra is optional)
                res["notes"].append(f"MCP round trip not measured: {exc}")
            progress.step()
        if "many_agents" in only:
            progress.describe("many agents per process")
            res["many_agents"] = many_agents.run(
                many_ks,
                total=5_000 if quick else many_agents.TOTAL,
                repeat=many_repeat,
                progress=progress,
            )
        if "groups" in only:
            progress.describe("group messages: one upload next to pairwise sends")
            res["groups"] = groups.run(quick)
            progress.step()
        if "nats_jetstream" in only:
            progress.describe("agentmesh on NATS JetStream next to raw JetStream")
            try:
                import nats  # noqa: F401  (the bench extra's nats-py)

                from . import nats_jetstream

                res["nats_jetstream"] = nats_jetstream.run(count=2000 if quick else 20000)
                print(nats_jetstream.table(res["nats_jetstream"]), file=sys.stderr)
            except ImportError as exc:
                res["notes"].append(f"NATS JetStream not measured: {exc}")
            progress.step()
    finally:
        progress.close()
    res["elapsed"] = time.time() - t0

    if ns.json:
        os.makedirs(os.path.dirname(os.path.abspath(ns.json)), exist_ok=True)
        with open(ns.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    for path in report.write(res, ns.out, ns.img_dir):
        print(f"wrote {path}")
    print(f"\n{command}: {res['elapsed']:.0f} s\ntargets:")
    print(report.summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
