"""The report's sections on real agents over the network hub (``benches.network_figures``)
and on many agents per process (``benches.many_agents``): tables and targets only; what each
figure means is in the docstrings of those two modules and in docs/agents.md."""

from __future__ import annotations

from typing import Any

from . import many_agents


def targets(res: dict[str, Any]) -> list[tuple[str, float, float, bool, str]]:
    """(what, ratio, bar, higher is better, detail) for each target these sections set."""
    out: list[tuple[str, float, float, bool, str]] = []
    rows = (res.get("many_agents") or {}).get("rows") or []
    if len(rows) > 1:
        one, most = rows[0], rows[-1]
        for key, who in (("receiver_us", "receiving process"), ("hub_us", "hub")):
            out.append(
                (
                    f"CPU per message of the {who} at {most['k']} agents per process "
                    f"within {many_agents.TARGET_CPU_RATIO}x of one",
                    most[key] / one[key],
                    many_agents.TARGET_CPU_RATIO,
                    False,
                    f"{most[key]:.1f} vs {one[key]:.1f} µs",
                )
            )
    for row in (res.get("agents") or {}).get("summary") or []:
        if row.get("met") is not None and "target" in row and "ratio" in row:
            out.append(
                (
                    f"{row['hub']} {row['mode']}: {row['figure']}",
                    row["ratio"],
                    row["target"],
                    False,
                    row.get("detail", ""),
                )
            )
    return out


def sections(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    agents = res.get("agents")
    if agents:
        lines += [
            "## Agents over the network hub",
            "",
            f"Real `Agent` objects in three processes (sender, hub, receiver), "
            f"{agents['payload_bytes']} B payloads; persistent rows are interleaved with the "
            "plain ones (`benches/network_figures.py`).",
            "",
            "| hub | mode | figure | value | target | met |",
            "|---|---|---|---|---|---|",
        ]
        for row in agents["summary"]:
            value = row["value"]
            text = f"{value:,.0f}" if "msg/s" in row["figure"] else f"{value:.3f}"
            met = {True: "yes", False: "**no**"}.get(row.get("met"), "")  # type: ignore[call-overload]
            target = row.get("target", "")
            lines.append(
                f"| {row['hub']} | {row['mode']} | {row['figure']} | {text} | {target} | {met} |"
            )
        lines.append("")
    mcp = res.get("mcp")
    if mcp:
        lines += [
            "## An MCP tool call between agents",
            "",
            "One `tools/call` at a time, its round trip from the caller's `call_tool`: the SDK's "
            "own in-memory transport (one process, no crypto) next to agentmesh.mcp on a "
            "LocalHub and through a hub process, and a plain `request` on the same hubs "
            "(`benches/mcp_round_trip.py`).",
            "",
            "| transport | p50 ms | p99 ms | p50 / in-memory |",
            "|---|---|---|---|",
        ]
        for name, figure in mcp.items():
            if isinstance(figure, dict) and "p50_ms" in figure:
                lines.append(
                    f"| {name} | {figure['p50_ms']:.3f} | {figure['p99_ms']:.3f} "
                    f"| {figure['ratio_to_in_memory']:.1f}x |"
                )
        lines.append("")
    many = res.get("many_agents")
    if many:
        lines += [
            "## Many agents per process",
            "",
            f"K sender agents in one process, K receivers in another, one hub; "
            f"{many['total']:,} signed 64 B messages in all; CPU per message, and its ratio to "
            "one pair"
            + (
                f" (medians of {many['repeat']} runs per K, the Ks interleaved)"
                if many.get("repeat", 1) > 1
                else ""
            )
            + " (`benches/many_agents.py`).",
            "",
            "| K pairs | msg/s | receiving process µs/msg | hub µs/msg | sending process µs/msg "
            "| receiver threads | receiving process by thread, µs/msg |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in many["rows"]:
            lines.append(
                f"| {r['k']} | {r['rate']:,.0f} | {r['receiver_us']:.1f} "
                f"({r['receiver_us_ratio']:.2f}x) | {r['hub_us']:.1f} ({r['hub_us_ratio']:.2f}x) "
                f"| {r['sender_us']:.1f} ({r['sender_us_ratio']:.2f}x) | {r['receiver_threads']} "
                "| "
                + ", ".join(
                    f"{name.removeprefix('agentmesh-')} {us:.1f}"
                    for name, us in (r.get("receiver_thread_us") or {}).items()
                    if us >= 0.05
                )
                + " |"
            )
        lines.append("")
    return lines
