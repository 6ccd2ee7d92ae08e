"""docs/benchmarks.md and docs/img/*.png from the results of a run."""

# ruff: noqa: E501  (this module is mostly report prose and table templates)

from __future__ import annotations

import os
from typing import Any

from . import crypto as c
from . import fresh, report_agents, report_groups
from .harness import SIZES, fmt_bytes, fmt_rate, fmt_time, size_label

NAN = float("nan")
#: glibc malloc settings that keep freed memory in the process (see the allocator finding).
ALLOC_TUNABLES = "glibc.malloc.trim_threshold=536870912:glibc.malloc.mmap_threshold=268435456"

# Contenders of the main comparison, in table order.
MAIN = [
    c.AM_SIGNED,
    c.AM_DENIABLE,
    c.CLASSIC,
    c.NACL,
    c.MEGOLM,
    c.OLM,
    c.FLOOR_SIGNED,
    c.FLOOR_DENIABLE,
    c.CORE_SIGNED,
    c.CORE_DENIABLE,
    c.AM_SIGNED_OBJ,
    c.AM_DENIABLE_OBJ,
    c.MEGOLM_OBJ,
    c.OLM_OBJ,
]


def _get(d: Any, *path: Any, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _med(res: dict[str, Any], size: int, name: str) -> float:
    v = _get(res, "seal_unseal", str(size), name, "median")
    return float(v) if v is not None else NAN


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "-"
    return f"{fmt_time(stat['median'])} ({fmt_time(stat['min'])}..{fmt_time(stat['max'])})"


def _x(v: float) -> str:
    return "-" if v != v else f"{v:.2f}x"


# ---------------------------------------------------------------------------------------------
# Targets


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what, the measured ratio, the bar, met or not."""
    out: list[dict[str, Any]] = []

    def add(what: str, ratio: float, bar: float, higher_is_better: bool, detail: str) -> None:
        if ratio != ratio:
            out.append({"what": what, "ratio": NAN, "bar": bar, "met": None, "detail": detail})
            return
        met = ratio >= bar if higher_is_better else ratio <= bar
        out.append(
            {
                "what": what,
                "ratio": ratio,
                "bar": bar,
                "met": met,
                "detail": detail,
                "hib": higher_is_better,
            }
        )

    if res.get("fresh"):
        for what, ratio, bar, detail in fresh.targets(res):
            add(what, ratio, bar, False, detail)
        big, floor = fresh.signed_big(res), _med(res, 1 << 20, c.FLOOR_SIGNED)
        add(
            "fresh process: 1 MiB signed seal+unseal within 2x the raw floor (in-process floor)",
            big / floor,
            2.0,
            False,
            f"{fmt_time(big)} vs floor {fmt_time(floor)}",
        )
        what, ratio, bar, detail = fresh.fresh_floor_target(res, floor)
        add(what, ratio, bar, False, detail)
    s64, d64 = _med(res, 64, c.AM_SIGNED), _med(res, 64, c.AM_DENIABLE)
    s1m, d1m = _med(res, 1 << 20, c.AM_SIGNED), _med(res, 1 << 20, c.AM_DENIABLE)
    add(
        "64 B signed seal+unseal ≥ 2.5x faster than classic",
        _med(res, 64, c.CLASSIC) / s64,
        2.5,
        True,
        f"{fmt_time(s64)} vs {fmt_time(_med(res, 64, c.CLASSIC))}",
    )
    add(
        "64 B signed at least as fast as vodozemac Megolm",
        _med(res, 64, c.MEGOLM) / s64,
        1.0,
        True,
        f"{fmt_time(s64)} vs {fmt_time(_med(res, 64, c.MEGOLM))}",
    )
    add(
        "64 B signed within 1.15x of the raw floor",
        s64 / _med(res, 64, c.FLOOR_SIGNED),
        1.15,
        False,
        f"{fmt_time(s64)} vs floor {fmt_time(_med(res, 64, c.FLOOR_SIGNED))}",
    )
    add(
        "64 B deniable ≥ 1.5x faster than vodozemac Olm",
        _med(res, 64, c.OLM) / d64,
        1.5,
        True,
        f"{fmt_time(d64)} vs {fmt_time(_med(res, 64, c.OLM))}",
    )
    add(
        "1 MiB signed seal+unseal ≥ 9x faster than classic",
        _med(res, 1 << 20, c.CLASSIC) / s1m,
        9.0,
        True,
        f"{fmt_time(s1m)} vs {fmt_time(_med(res, 1 << 20, c.CLASSIC))}",
    )
    add(
        "1 MiB deniable ≥ 3x faster than vodozemac Olm (both unsigned)",
        _med(res, 1 << 20, c.OLM) / d1m,
        3.0,
        True,
        f"{fmt_time(d1m)} vs {fmt_time(_med(res, 1 << 20, c.OLM))}",
    )
    add(
        "1 MiB signed ≥ 3x faster than vodozemac Olm (Olm signs nothing)",
        _med(res, 1 << 20, c.OLM) / s1m,
        3.0,
        True,
        f"{fmt_time(s1m)} vs {fmt_time(_med(res, 1 << 20, c.OLM))}",
    )
    b = _get(res, "batches", "signed/64", "stats") or {}
    n = _get(res, "batches", "signed/64", "n", default=256)
    many = _get(b, f"signed unseal_many x{n}", "median", default=NAN)
    single = _get(b, f"signed unseal x{n} (single calls)", "median", default=NAN)
    add(
        f"unseal_many (signed 64 B, x{n}) on two cores ≥ 3x the single-call unseal rate",
        single / many,
        3.0,
        True,
        f"{fmt_time(many)} vs {fmt_time(single)} per message",
    )
    lh = _get(res, "localhub", "64") or {}
    lh_t = _get(lh, c.LOCALHUB, "median", default=NAN)
    raw_t = _get(lh, c.AM_SIGNED_OBJ, "median", default=NAN)
    add(
        "LocalHub send-to-handler ≥ 0.85 of raw seal+unseal (64 B, rate ratio)",
        raw_t / lh_t,
        0.85,
        True,
        f"{fmt_time(lh_t)} vs {fmt_time(raw_t)} per message",
    )
    mem = _get(res, "memory", "agentmesh_deniable") or []
    by = {m["messages"]: m for m in mem}
    lo_n, hi_n = (10_000, 1_000_000) if 1_000_000 in by else (1_000, 10_000)
    if lo_n in by and hi_n in by and by[lo_n].get("heap") is not None:
        # Per session: the larger of the live-heap growth and the state growth.
        growth = max(by[hi_n]["heap"] - by[lo_n]["heap"], by[hi_n]["state"] - by[lo_n]["state"]) / 2
        add(
            f"memory per session flat (within 16 KiB) from {lo_n:,} to {hi_n:,} messages",
            growth / 1024,
            16.0,
            False,
            f"live heap per session {fmt_bytes(by[lo_n]['heap'] / 2)} -> {fmt_bytes(by[hi_n]['heap'] / 2)}, "
            f"state {fmt_bytes(by[lo_n]['state'] / 2)} -> {fmt_bytes(by[hi_n]['state'] / 2)}",
        )
    for what, ratio, bar, higher_is_better, detail in report_agents.targets(res):
        add(what, ratio, bar, higher_is_better, detail)
    for what, ratio, bar, higher_is_better, detail in report_groups.targets(res):
        add(what, ratio, bar, higher_is_better, detail)
    return out


def _target_table(ts: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | bar | result | detail (medians) |", "|---|---|---|---|---|"]
    for t in ts:
        if t["met"] is None:
            lines.append(f"| {t['what']} | - | - | not measured | {t['detail']} |")
            continue
        unit = " KiB" if "KiB" in t["what"] else "x"
        got = f"{t['ratio']:.2f}{unit}"
        bar = ("≥ " if t["hib"] else "≤ ") + f"{t['bar']:g}{unit}"
        res = "**met**" if t["met"] else "**missed**"
        if not t["met"]:
            short = (t["bar"] / t["ratio"]) if t["hib"] else (t["ratio"] / t["bar"])
            res += (
                f" (by {short:.2f}x)" if unit == "x" else f" (by {t['ratio'] - t['bar']:.1f} KiB)"
            )
        lines.append(f"| {t['what']} | {got} | {bar} | {res} | {t['detail']} |")
    return lines


# ---------------------------------------------------------------------------------------------
# Charts


def charts(res: dict[str, Any], img_dir: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    os.makedirs(img_dir, exist_ok=True)
    made = []
    names = [c.AM_SIGNED, c.AM_DENIABLE, c.CLASSIC, c.NACL, c.MEGOLM, c.OLM, c.FLOOR_SIGNED]
    colors = ["#1f5fbf", "#6fa8ff", "#c0392b", "#e67e22", "#7d3c98", "#b39ddb", "#555555"]
    su = res.get("seal_unseal") or {}
    if su:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        width = 0.8 / len(names)
        for i, (name, col) in enumerate(zip(names, colors, strict=True)):
            xs, ys, lo, hi = [], [], [], []
            for j, size in enumerate(SIZES):
                st = _get(su, str(size), name)
                if st:
                    xs.append(j + (i - len(names) / 2 + 0.5) * width)
                    ys.append(st["median"] / 1e3)
                    lo.append((st["median"] - st["min"]) / 1e3)
                    hi.append((st["max"] - st["median"]) / 1e3)
            if xs:
                ax.bar(
                    xs,
                    ys,
                    width,
                    label=name,
                    color=col,
                    yerr=[lo, hi],
                    capsize=2,
                    error_kw={"elinewidth": 0.6},
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(SIZES)), [size_label(s) for s in SIZES])
        ax.set_ylabel("µs per seal + unseal (log scale, lower is better)")
        ax.set_title('One message sealed and unsealed, payload {"text": <size>}')
        ax.legend(fontsize=8, ncol=2)
        ax.grid(axis="y", which="both", alpha=0.25)
        fig.tight_layout()
        path = os.path.join(img_dir, "bench_seal_unseal.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    net = res.get("network") or {}
    if net.get("hub") or net.get("nats"):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
        for k, (kind, label, col) in enumerate(
            (
                ("hub", "agentmesh hub (E2E, durable)", "#1f5fbf"),
                ("nats", "NATS pub/sub (plain)", "#999999"),
            )
        ):
            ow = _get(net, kind, "one_way") or {}
            sizes = [s for s in SIZES if str(s) in ow]
            if sizes:
                vals = [_median([r["rate"] for r in ow[str(s)]]) for s in sizes]
                a1.bar(
                    [SIZES.index(s) + (k - 0.5) * 0.4 for s in sizes],
                    vals,
                    0.4,
                    label=label,
                    color=col,
                )
            pp = _get(net, kind, "ping_pong") or {}
            sizes = [s for s in SIZES if str(s) in pp]
            if sizes:
                p50 = [_median([r["p50"] for r in pp[str(s)]]) / 1e6 for s in sizes]
                p99 = [_median([r["p99"] for r in pp[str(s)]]) / 1e6 for s in sizes]
                xs = [SIZES.index(s) + (k - 0.5) * 0.4 for s in sizes]
                a2.bar(xs, p50, 0.4, label=f"{label} p50", color=col)
                a2.scatter(
                    xs,
                    p99,
                    marker="_",
                    s=200,
                    color="black",
                    zorder=3,
                    label="p99" if k == 0 else None,
                )
        from matplotlib.ticker import FuncFormatter

        for ax, title, yl in (
            (a1, "One-way, 3 processes", "messages / s (log)"),
            (a2, "Ping-pong round trip", "ms (log)"),
        ):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xticks(range(len(SIZES)), [size_label(s) for s in SIZES])
            ax.set_title(title)
            ax.set_ylabel(yl)
            ax.grid(axis="y", which="both", alpha=0.25)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(img_dir, "bench_network.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    mem = res.get("memory") or {}
    if mem.get("agentmesh_deniable"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label, col in (
            ("agentmesh_deniable", "agentmesh, live heap per session", "#1f5fbf"),
            ("agentmesh_deniable_loss", "agentmesh, 1% of messages lost", "#6fa8ff"),
            ("classic", "classic: replay nonce set", "#c0392b"),
            ("olm", "vodozemac Olm: pickled session", "#b39ddb"),
        ):
            rows = mem.get(key)
            if not isinstance(rows, list) or not rows:
                continue
            field = "heap" if key.startswith("agentmesh") else "state"
            xs = [r["messages"] for r in rows if r.get(field) is not None]
            ys = [
                r[field] / 2 / 1024
                if key.startswith("agentmesh") or key == "olm"
                else r[field] / 1024
                for r in rows
                if r.get(field) is not None
            ]
            ax.plot(xs, ys, marker="o", label=label, color=col)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("messages in the session")
        ax.set_ylabel("KiB per session (log)")
        ax.set_title("Memory per session after many messages")
        ax.grid(which="both", alpha=0.25)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(img_dir, "bench_memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return NAN
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown(res: dict[str, Any], img_rel: str) -> str:
    m = res["machine"]
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(
        "agentmesh next to what users would pick instead (a hand-rolled design on `cryptography`, "
        "PyNaCl, Matrix's vodozemac, a plain NATS broker) and next to the physical floor: the raw "
        "primitives a message cannot avoid, timed in Rust in the same process and the same run."
    )
    w("")
    w(
        f"Generated by `{res['command']}` on {res['date']} ({'quick' if res['quick'] else 'full'} mode, "
        f"{res['elapsed']:.0f} s). Every in-process number is the **median** over interleaved rounds "
        "(each round runs every contender of a case once, in rotating order), with the min..max range "
        "in parentheses. Lower times are better."
    )
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {m['cpu']} ({m['cores']} cores; {m['cpu_flags']}) |")
    w(f"| memory | {m['memory']} |")
    w(f"| OS | {m['os']} |")
    w(f"| Python | {m['python']} |")
    w(f"| Rust | {m['rustc']} (release profile: LTO fat, codegen-units 1) |")
    w(f"| load average at start | {m['load']} (the machine is shared; ranges show the noise) |")
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    w(f"| packages | {vers} |")
    w(f"| NATS server | {m['nats_server']} |")
    w("")
    w(
        'Reproduce: `pip install -e ".[bench]"` and `pip install ./rust/agentmesh-bench` (the raw '
        "floor and the core alone: a module of their own, never in the agentmesh wheel; without "
        "it their rows are missing and the report says so), then `python -m benches` (full, about "
        "5 minutes on 2 cores) or `python -m benches --quick` (about half a minute). The Rust-side criterion "
        "benchmarks, each next to its floor with a ratio table at the end: "
        "`cargo bench -p agentmesh-core --bench core` (`-- --quick` for a fast pass)."
    )
    w("")

    ts = targets(res)
    if ts:
        w("## Targets")
        w("")
        L.extend(_target_table(ts))
        w("")
        w(
            "agentmesh is measured end to end as an application uses it: payload dict -> wire bytes "
            "-> payload dict (`CryptoSession.seal(payload).to_bytes()`, `CryptoSession.unseal(bytes)`); "
            "every contender likewise produces and consumes its wire form."
        )
        w("")

    L.extend(fresh.markdown(res, _med(res, 1 << 20, c.FLOOR_SIGNED)))

    su = res.get("seal_unseal")
    if su:
        w("## Seal + unseal, one message")
        w("")
        if os.path.exists(os.path.join(res.get("img_dir", ""), "bench_seal_unseal.png")):
            w(f"![seal+unseal per payload size]({img_rel}/bench_seal_unseal.png)")
            w("")
        w(
            "Time per message sealed by alice and unsealed by bob, established session, payload "
            '`{"text": <n characters>}`.'
        )
        w("")
        w("| contender | " + " | ".join(size_label(s) for s in SIZES) + " |")
        w("|---|" + "---|" * len(SIZES))
        for name in MAIN:
            if any(_get(su, str(s), name) for s in SIZES):
                w(f"| {name} | " + " | ".join(_cell(_get(su, str(s), name)) for s in SIZES) + " |")
        w("")
        big = str(SIZES[-1])
        fl = {n: _get(su, big, n, "faults_per_op") for n in MAIN if _get(su, big, n)}
        if any(v is not None and v == v for v in fl.values()):
            w(
                f"Minor page faults per operation at {size_label(SIZES[-1])} (memory the kernel had to map "
                "in and zero because the allocator had given it back; each costs about a microsecond "
                "here): "
                + ", ".join(f"{n} {v:.0f}" for n, v in fl.items() if v is not None and v == v)
                + ". Every contender that allocates fresh megabyte buffers per message pays this, and "
                "how much depends on the state of glibc's heap at that moment (so 1 MiB numbers "
                "differ between runs more than their ranges suggest): see *The allocator, measured* "
                "below."
            )
            w("")
        w("What agentmesh's time is made of, as ratios of medians (1.00x = as fast as the floor):")
        w("")
        w("| | " + " | ".join(size_label(s) for s in SIZES) + " |")
        w("|---|" + "---|" * len(SIZES))
        rows = [
            ("signed: Python call / raw floor", c.AM_SIGNED, c.FLOOR_SIGNED),
            ("signed: Rust core alone / raw floor", c.CORE_SIGNED, c.FLOOR_SIGNED),
            ("signed: Python call / Rust core", c.AM_SIGNED, c.CORE_SIGNED),
            ("deniable: Python call / raw floor", c.AM_DENIABLE, c.FLOOR_DENIABLE),
            ("deniable: Rust core alone / raw floor", c.CORE_DENIABLE, c.FLOOR_DENIABLE),
            ("deniable: Python call / Rust core", c.AM_DENIABLE, c.CORE_DENIABLE),
        ]
        for label, a, b in rows:
            w(
                f"| {label} | "
                + " | ".join(_x(_med(res, s, a) / _med(res, s, b)) for s in SIZES)
                + " |"
            )
        w("")
        w(
            "agentmesh's speed-up over each alternative (their median / agentmesh's median, same "
            "size; signed agentmesh against signing designs, deniable against Olm):"
        )
        w("")
        w("| | " + " | ".join(size_label(s) for s in SIZES) + " |")
        w("|---|" + "---|" * len(SIZES))
        for label, other, mine in (
            ("classic (cryptography) / agentmesh signed", c.CLASSIC, c.AM_SIGNED),
            ("PyNaCl sign + Box / agentmesh signed", c.NACL, c.AM_SIGNED),
            ("vodozemac Megolm / agentmesh signed", c.MEGOLM, c.AM_SIGNED),
            ("vodozemac Olm / agentmesh deniable", c.OLM, c.AM_DENIABLE),
            ("vodozemac Olm / agentmesh signed", c.OLM, c.AM_SIGNED),
        ):
            w(
                f"| {label} | "
                + " | ".join(_x(_med(res, s, other) / _med(res, s, mine)) for s in SIZES)
                + " |"
            )
        w("")
        w(
            "The raw floor is `agentmesh_bench.floor` (crate `rust/agentmesh-bench`): per message, "
            "two chain steps, AES-256-GCM seal and open (ring) of signature + payload with the real "
            "header as associated data, and in signed mode the signing input (label ‖ header ‖ "
            "BLAKE3 digest of the payload) twice, Ed25519 sign and `verify_strict` (ed25519-dalek), "
            "into fresh buffers like the protocol's; the chain step, nonce, AEAD call and signing "
            "input are the core's own functions (`agentmesh_core::internals`). The Rust core alone "
            "is `agentmesh_bench.core` (the same session API, no Python, no JSON). "
            "The classic design is `benches/peers/classic.py`."
        )
        w("")
    for note in res.get("notes", []):
        w(f"> note: {note}")
        w("")

    bd = res.get("breakdown")
    if bd and "skipped" not in bd:
        w("## Where the time goes")
        w("")
        w(
            "Per message, in the same run (medians of repeated batches). The signed floor is the "
            "sum of the primitives (each once per seal and once per unseal, the payload digest twice)."
        )
        w("")
        w("| | 64 B | 1 MiB |")
        w("|---|---|---|")
        keys = list(_get(bd, "64", "primitives") or {})
        for k in keys:
            w(
                f"| Rust: {k} | {fmt_time(bd['64']['primitives'][k])} | "
                f"{fmt_time(_get(bd, str(1 << 20), 'primitives', k, default=NAN))} |"
            )
        for k, label in (
            ("floor_signed", "Rust: floor, signed seal+unseal"),
            ("core_signed", "Rust: core seal+unseal, signed"),
            ("floor_deniable", "Rust: floor, deniable seal+unseal"),
            ("core_deniable", "Rust: core seal+unseal, deniable"),
        ):
            w(
                f"| {label} | {fmt_time(bd['64'][k])} | {fmt_time(_get(bd, str(1 << 20), k, default=NAN))} |"
            )
        for k in _get(bd, "64", "python") or {}:
            w(
                f"| Python: {k} | {fmt_time(bd['64']['python'][k])} | "
                f"{fmt_time(_get(bd, str(1 << 20), 'python', k, default=NAN))} |"
            )
        w("")
        L.extend(findings(res))
        w("")

    b = res.get("batches")
    if b:
        w("## Batches: `seal_many` / `unseal_many` (both cores) against single calls")
        w("")
        w(
            "Time per message. `unseal_many` checks signed batches with Ed25519 batch verification "
            "and decrypts on every core; only the unseal itself is timed."
        )
        w("")
        w("| case | per message | rate | vs single calls |")
        w("|---|---|---|---|")
        for key, v in b.items():
            st, n = v["stats"], v["n"]
            mode, size = key.split("/")
            for name, s in st.items():
                base = None
                if "unseal_many" in name:
                    base = st.get(f"{mode} unseal x{n} (single calls)")
                elif "seal_many" in name:
                    base = st.get(f"{mode} seal x{n} (single calls)")
                vs = _x(base["median"] / s["median"]) if base else ""
                w(
                    f"| {name}, {size_label(int(size))} | {_cell(s)} | {fmt_rate(1e9 / s['median'])} | {vs} |"
                )
        w("")

    lh = res.get("localhub")
    if lh:
        w("## Agent.send -> handler through LocalHub")
        w("")
        if "skipped" in lh:
            w(f"Skipped: {lh['skipped']}.")
        else:
            w(
                '`alice.send("bob", text=...)` returns after bob\'s handler ran (seal, routing, unseal, '
                "Message, handler), against the bare CryptoSession calls."
            )
            w("")
            w(
                "| payload | Agent.send -> handler | seal+unseal (Envelope objects) | seal+unseal (wire bytes) | rate vs objects |"
            )
            w("|---|---|---|---|---|")
            for size, st in lh.items():
                a = st.get(c.LOCALHUB)
                o = st.get(c.AM_SIGNED_OBJ)
                wb = st.get(c.AM_SIGNED)
                ratio = _x(o["median"] / a["median"]) if a and o else "-"
                w(f"| {size_label(int(size))} | {_cell(a)} | {_cell(o)} | {_cell(wb)} | {ratio} |")
        w("")

    st = res.get("setups")
    if st:
        w("## Session set-ups")
        w("")
        w(
            "From two identities (keys and public bundles already exchanged) to a first 64-byte "
            "message delivered: both sides create their session, the initiator seals, the responder "
            "unseals. agentmesh: `perform_key_exchange` x2 (each verifies the peer's bundle "
            "signature) + X3DH-style set-up + first DH ratchet step. Classic: X25519 + HKDF on both "
            "sides. PyNaCl: `Box` precomputation on both sides. Olm: bob generates a one-time key, "
            "alice creates the outbound session, bob the inbound one from the pre-key message. "
            "Megolm: a new group session and its inbound copy (sharing the session key over Olm, "
            "as Matrix does, is not included)."
        )
        w("")
        w("| contender | per set-up | set-ups per second |")
        w("|---|---|---|")
        for name, s in st.items():
            w(f"| {name} | {_cell(s)} | {fmt_rate(1e9 / s['median'])} |")
        w("")

    mem = res.get("memory")
    if mem:
        w("## Memory per session after many messages")
        w("")
        if os.path.exists(os.path.join(res.get("img_dir", ""), "bench_memory.png")):
            w(f"![memory per session]({img_rel}/bench_memory.png)")
            w("")
        w(
            "A session pair driven to N messages (alice -> bob in batches of 500, bob answering "
            "once per batch so the DH ratchet turns). *live heap*: what the two sessions give back "
            "to the Rust core's allocator when dropped (the extension counts its live bytes), "
            "halved: per session. *state*: "
            "`export_state()` bytes per session (every key, counter, skipped key and replay record)."
        )
        w("")
        w("| run | messages | live heap per session | state per session |")
        w("|---|---|---|---|")
        for key, label in (
            ("agentmesh_deniable", "agentmesh (deniable), in order"),
            ("agentmesh_signed", "agentmesh (signed), in order"),
            ("agentmesh_deniable_loss", "agentmesh (deniable), 1% lost"),
        ):
            for r in mem.get(key) or []:
                heap = fmt_bytes(r["heap"] / 2) if r.get("heap") is not None else "n/a"
                w(f"| {label} | {r['messages']:,} | {heap} | {fmt_bytes(r['state'] / 2)} |")
        for key, label, what in (
            ("classic", "classic: the receiver's replay nonce set", "state"),
            ("olm", "vodozemac Olm: pickled session, per side", "state"),
        ):
            rows = mem.get(key)
            if isinstance(rows, str):
                w(f"| {label} | skipped: {rows} | | |")
                continue
            for r in rows or []:
                v = r[what] / 2 if key == "olm" else r[what]
                w(f"| {label} | {r['messages']:,} | | {fmt_bytes(v)} |")
        w("")
        w(
            "In order, agentmesh's state stops growing once its bounded replay records are full "
            "(the peer's last 64 ratchet keys, 64 session ids). Lost messages leave skipped message "
            "keys, bounded by `MAX_SKIPPED_KEYS` (2000) per session. The classic design's replay "
            "set grows by one entry per message, forever."
        )
        w("")

    net = res.get("network")
    if net:
        w("## Network: hub vs NATS")
        w("")
        if os.path.exists(os.path.join(res.get("img_dir", ""), "bench_network.png")):
            w(f"![network]({img_rel}/bench_network.png)")
            w("")
        w(
            "Three processes on 127.0.0.1 (sender, broker, receiver). agentmesh: `Agent.send` -> "
            "`NetworkHub` -> `agentmesh-hub` (durable store, `synchronous=FULL`) -> receiving Agent's "
            "handler: encryption, signatures, store-and-forward and acks included. NATS: nats-py "
            "publishing the same JSON bytes through `nats-server` to a subscriber, no cryptography, no "
            "persistence: the broker ceiling. One-way rate = messages / (last received - first sent); "
            "ping-pong = send, the peer's handler answers, wait for the answer."
        )
        w("")
        w(
            "| payload | agentmesh hub one-way | NATS one-way | hub / NATS | agentmesh RTT p50 / p99 | NATS RTT p50 / p99 |"
        )
        w("|---|---|---|---|---|---|")
        for size in SIZES:

            def rate(kind: str, size: int = size) -> tuple[str, float]:
                rows = _get(net, kind, "one_way", str(size)) or []
                if not rows:
                    return "-", NAN
                rs = [r["rate"] for r in rows]
                md = _median(rs)
                rng = f" ({fmt_rate(min(rs))}..{fmt_rate(max(rs))})" if len(rs) > 1 else ""
                return f"{fmt_rate(md)}{rng}", md

            def rtt(kind: str, size: int = size) -> str:
                rows = _get(net, kind, "ping_pong", str(size)) or []
                if not rows:
                    return "-"
                return f"{fmt_time(_median([r['p50'] for r in rows]))} / {fmt_time(_median([r['p99'] for r in rows]))}"

            (hs, hv), (ns_, nv) = rate("hub"), rate("nats")
            if hs == "-" and ns_ == "-":
                continue
            w(
                f"| {size_label(size)} | {hs} | {ns_} | {_x(hv / nv) if hv == hv and nv == nv else '-'} | {rtt('hub')} | {rtt('nats')} |"
            )
        w("")
        for note in net.get("notes", []):
            w(f"> note: {note}")
            w("")
    L.extend(report_agents.sections(res))
    L.extend(report_groups.sections(res))
    return "\n".join(L).rstrip() + "\n"


def findings(res: dict[str, Any]) -> list[str]:
    """What the numbers say about where a message's time goes, with the numbers of this run
    (agentmesh, core and floor from the interleaved seal+unseal table; primitives, Python-side
    pieces and allocator effects from the breakdown)."""
    bd = res.get("breakdown") or {}
    out: list[str] = []
    small, one = _get(bd, "64"), _get(bd, str(1 << 20))
    if small:
        p = small["primitives"]
        sig = p["ed25519_sign"] + p["ed25519_verify_strict"]
        s64, c64, f64 = (_med(res, 64, n) for n in (c.AM_SIGNED, c.CORE_SIGNED, c.FLOOR_SIGNED))
        out.append(
            f"- **64 B signed**: Ed25519 sign + `verify_strict` take {fmt_time(sig)} "
            f"({100 * sig / small['floor_signed']:.0f}% of the {fmt_time(small['floor_signed'])} floor measured "
            f"here; HKDF, AES-GCM and the BLAKE3 digest together {fmt_time(small['floor_signed'] - sig)}). In the "
            f"interleaved table the floor is {fmt_time(f64)}, the Rust core {fmt_time(c64)} "
            f"({_x(c64 / f64)}) and the Python call {fmt_time(s64)} ({_x(s64 / f64)}): "
            + (
                f"the Python side (dict -> JSON, Envelope objects, `to_bytes`, parsing the wire "
                f"bytes, JSON -> dict) costs {fmt_time(s64 - c64)} per message."
                if s64 > c64
                else "the Python side is within this run's noise (the core alone measured slower "
                "than the Python call)."
            )
        )
    if one:
        p = one["primitives"]
        s1, c1, f1 = (_med(res, 1 << 20, n) for n in (c.AM_SIGNED, c.CORE_SIGNED, c.FLOOR_SIGNED))
        d1 = _med(res, 1 << 20, c.AM_DENIABLE)
        sha = 2 * p.get("blake3_payload", p.get("sha256_payload", float("nan")))
        aes = p["aes256gcm_seal"] + p["aes256gcm_open"]
        py = one["python"]
        out.append(
            f"- **1 MiB signed**: the content digest of the payload (BLAKE3, once to sign, once to verify) costs "
            f"{fmt_time(sha)} of the {fmt_time(one['floor_signed'])} floor, AES-256-GCM seal + open "
            f"{fmt_time(aes)}. Interleaved: floor {fmt_time(f1)}, Rust core {fmt_time(c1)}, Python call "
            f"{fmt_time(s1)}: the core is {_x(c1 / f1)} its floor, the {fmt_time(s1 - c1)} above it are the "
            f"Python glue: JSON of the 1 MiB string (writing and parsing it, UTF-8 checks) and "
            f"copies of 1 MiB buffers (the string into the envelope, the envelope into its `bytes`, "
            f"those into the parsed copy that is decrypted in place, the `str`; {fmt_time(p['copy_to_fresh_buffer'])} each when warm); the "
            f"profile below has the shares. Minor page faults per seal+unseal in this "
            f"(long-running) process: {one.get('minor_faults_per_op', float('nan')):.0f}; a fresh "
            f"process is another story (next point)."
        )
        alloc = one.get("allocator")
        if alloc:
            out.append(
                f"- **The allocator, measured**: the Rust core's own buffers come from mimalloc, which "
                f"keeps freed memory; Python's `bytes` and `str` come from glibc, which in a fresh "
                f"process gives freed 1 MiB buffers back to the kernel between messages, so every "
                f"message faults and zeroes their pages again. The same 1 MiB seal+unseal in child processes, default vs "
                f"`GLIBC_TUNABLES={ALLOC_TUNABLES}` (keep freed memory): signed "
                f"{fmt_time(alloc['signed_default'])} -> {fmt_time(alloc['signed_tuned'])}, deniable "
                f"{fmt_time(alloc['deniable_default'])} -> {fmt_time(alloc['deniable_tuned'])} "
                f"(classic: {fmt_time(alloc['classic_default'])} -> {fmt_time(alloc['classic_tuned'])})."
            )
        prof = one.get("perf")
        if prof and prof.get("top"):
            out.append(
                f"- **Profile** (`perf record` of {prof['iterations']} signed 1 MiB seal+unseal calls "
                "in a child process with a warm heap; share of samples):"
            )
            out.append("")
            out.append("  | symbol | share |")
            out.append("  |---|---|")
            for r in prof["top"]:
                sym = r["symbol"].replace("|", "\\|")
                out.append(f"  | `{sym}` | {r['percent']:.1f}% |")
            out.append("")
        out.append(
            f"- **JSON of a 1 MiB string**: agentmesh does it in Rust; for scale, Python's own "
            f"`json.dumps` of the payload takes {fmt_time(py['json_dumps_payload'])} and `json.loads` "
            f"{fmt_time(py['json_loads_payload'])}. `CryptoSession.seal` alone (JSON, digest, sign, "
            f"encrypt): {fmt_time(py['CryptoSession.seal (signed)'])}. Deniable 1 MiB: {fmt_time(d1)}."
        )
    return out


def criterion_results(target_dir: str) -> dict[str, Any] | None:
    """Medians of the last ``cargo bench -p agentmesh-core --bench core`` run, if any."""
    import datetime
    import json

    base = os.path.join(target_dir, "criterion")
    if not os.path.isdir(os.path.join(base, "protocol_signed")):
        return None
    out: dict[str, Any] = {"rows": {}, "newest": 0.0}
    for group in (
        "protocol_signed",
        "protocol_deniable",
        "floor_signed",
        "floor_deniable",
        "batch_verify",
        "primitive",
    ):
        gdir = os.path.join(base, group)
        if not os.path.isdir(gdir):
            continue
        for func in sorted(os.listdir(gdir)):
            fdir = os.path.join(gdir, func)
            if not os.path.isdir(fdir):
                continue
            params = [
                p
                for p in os.listdir(fdir)
                if os.path.isdir(os.path.join(fdir, p)) and p != "report"
            ]
            if os.path.exists(os.path.join(fdir, "new", "estimates.json")):
                params = [""]
            for param in params:
                path = os.path.join(fdir, param, "new", "estimates.json")
                try:
                    with open(path) as f:
                        est = json.load(f)
                except (OSError, ValueError):
                    continue
                out["rows"][f"{group}/{func}/{param}".rstrip("/")] = est["median"]["point_estimate"]
                out["newest"] = max(out["newest"], os.path.getmtime(path))
    out["date"] = datetime.datetime.fromtimestamp(out["newest"], datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    return out


def _criterion_section(cr: dict[str, Any], ratios: dict[str, Any] | None) -> list[str]:
    rows = cr["rows"]
    L = [
        "## Rust core vs its floor (`cargo bench`)",
        "",
        f"From the last `cargo bench -p agentmesh-core --bench core` on this machine ({cr['date']}). "
        "The ratio table measures each protocol operation and its floor interleaved (a batch of "
        "one, then a batch of the other, every round), so a busy machine slows both alike; the "
        "individual criterion results are in `target/criterion/`.",
        "",
    ]
    if ratios and ratios.get("rows"):
        L += [
            f"| operation | protocol | floor | ratio (range over {ratios['rounds']} rounds) |",
            "|---|---|---|---|",
        ]
        for r in ratios["rows"]:
            L.append(
                f"| {r['label']} | {fmt_time(r['protocol_ns'])} | {fmt_time(r['floor_ns'])} | "
                f"{r['ratio']:.2f}x ({r['ratio_min']:.2f}..{r['ratio_max']:.2f}) |"
            )
        L += [
            "",
            "In the `unseal_many` rows the floor column is single `unseal` calls of the same batch.",
            "",
        ]
    bv = {k.split("/")[1]: v / 256 for k, v in rows.items() if k.startswith("batch_verify/")}
    if bv:
        L += ["Ed25519 verification of 256 signatures from one key, per signature, one core:", ""]
        L += ["| method | per signature |", "|---|---|"]
        for k, label in (
            ("verify_strict_each", "`verify_strict` one by one"),
            ("dalek_verify_batch", "`ed25519_dalek::verify_batch` (what `unseal_many` uses)"),
            (
                "same_key_msm",
                "same-key batch equation, n + 2 points (prototype in `benches/core.rs`)",
            ),
        ):
            if k in bv:
                L.append(f"| {label} | {fmt_time(bv[k])} |")
        L.append("")
    js = {k.split("/")[-1]: v for k, v in rows.items() if k.startswith("primitive/json_string/")}
    if js:
        L += ['JSON encoding of a 1 MiB string (what the glue does with `{"text": ...}`):', ""]
        L += ["| writer | time |", "|---|---|"]
        for k, label in (
            (
                "serde_json_1MiB",
                "`serde_json::to_writer` (what `agentmesh-py/src/json.rs` used before its block-scanned writer)",
            ),
            (
                "scan_and_copy_1MiB",
                "scan 32 bytes at a time, copy clean runs (prototype in `benches/core.rs`)",
            ),
        ):
            if k in js:
                L.append(f"| {label} | {fmt_time(js[k])} |")
        L.append("")
    return L


def write(res: dict[str, Any], out_path: str, img_dir: str) -> list[str]:
    res["img_dir"] = img_dir
    made = charts(res, img_dir)
    img_rel = os.path.relpath(img_dir, os.path.dirname(os.path.abspath(out_path)) or ".")
    text = markdown(res, img_rel)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    cr = criterion_results(target)
    if cr and cr["rows"]:
        ratios = None
        try:
            import json

            with open(os.path.join(target, "criterion", "agentmesh-ratios.json")) as f:
                ratios = json.load(f)
        except (OSError, ValueError):
            pass
        text = text.rstrip() + "\n\n" + "\n".join(_criterion_section(cr, ratios))
    with open(out_path, "w") as f:
        f.write(text)
    return [out_path, *made]


def summary(res: dict[str, Any]) -> str:
    lines = []
    for t in targets(res):
        if t["met"] is None:
            lines.append(f"  [ n/a  ] {t['what']}")
        else:
            unit = " KiB" if "KiB" in t["what"] else "x"
            lines.append(
                f"  [{'MET   ' if t['met'] else 'MISSED'}] {t['what']}: {t['ratio']:.2f}{unit} ({t['detail']})"
            )
    return "\n".join(lines)


__all__ = ["markdown", "summary", "targets", "write"]
