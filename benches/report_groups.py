"""The report's section on group messages (``benches.groups``): one upload fanned out by the
hub next to the same fan-out with pairwise sends. What each figure means: that module."""

from __future__ import annotations

from typing import Any

from . import groups

_HUBS = (("localhub", "LocalHub"), ("network", "network hub"))


def targets(res: dict[str, Any]) -> list[tuple[str, float, float, bool, str]]:
    """(what, ratio, bar, higher is better, detail): the sender's cost at the largest size."""
    out: list[tuple[str, float, float, bool, str]] = []
    section = res.get("groups") or {}
    size = str(max(groups.SIZES))
    for key, name in _HUBS:
        row = (section.get(key) or {}).get(size)
        if row:
            out.append(
                (
                    f"{name}: a group message to {size} members costs its sender at least "
                    f"{groups.TARGET_SENDER_RATIO:g}x less than {size} pairwise sends",
                    row["sender_ratio"],
                    groups.TARGET_SENDER_RATIO,
                    True,
                    f"{row['sender_group_us']:,.0f} vs {row['sender_pairwise_us']:,.0f} µs",
                )
            )
    return out


def sections(res: dict[str, Any]) -> list[str]:
    section = res.get("groups")
    if not section:
        return []
    lines = [
        "## Group messages: one upload, many deliveries",
        "",
        f"One {section['payload_bytes']} B message to a group (sealed and signed once, uploaded "
        "once, fanned out by the hub) next to the same fan-out with one pairwise send per "
        "member: the sender's cost (seal and hand to the hub; on a LocalHub, whose call runs "
        "every member's handlers in the sender's thread, measured in a call of its own with the "
        "members' receive held, so it includes the LocalHub's routing of the copies) and the "
        "time until every member's handler ran, medians (`benches/groups.py`).",
        "",
        "| hub | members | sender: group µs | sender: pairwise µs | pairwise / group "
        "| all handled: group µs | all handled: pairwise µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, name in _HUBS:
        for size, row in (section.get(key) or {}).items():
            lines.append(
                f"| {name} | {size} | {row['sender_group_us']:,.0f} "
                f"| {row['sender_pairwise_us']:,.0f} | {row['sender_ratio']:.1f}x "
                f"| {row['all_handled_group_us']:,.0f} | {row['all_handled_pairwise_us']:,.0f} |"
            )
    crypto = section.get("crypto") or {}
    lines += ["", "The sender's cryptography alone (no hub): "]
    parts = [
        f"{n} members {crypto[n]['group_us']:,.1f} µs group vs {crypto[n]['pairwise_us']:,.1f} "
        f"µs pairwise ({crypto[n]['ratio']:.1f}x)"
        for n in map(str, groups.SIZES)
        if n in crypto
    ]
    lines[-1] += "; ".join(parts) + "."
    lines.append("")
    return lines
