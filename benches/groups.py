"""The ``groups`` section of ``python -m benches`` (alone: ``python -m benches.groups [--quick]
[--no-network]``): the cost of one 64 B message to a group of N members (10 and 100) next to the
same fan-out done with N pairwise sends.

Printed as JSON (times in microseconds, medians over the rounds):

* ``crypto``: the sender's cryptography alone. Group: one ``GroupSession.seal`` and its
  unaddressed form (what is uploaded once, ``agentmesh.fanout``); pairwise: one
  ``CryptoSession.seal`` per member on established signed sessions. Also one group seal + one
  group open (the figure to set next to vodozemac's Megolm encrypt + decrypt, measured too when
  the ``vodozemac`` package is installed).
* ``localhub``: ``group.send`` versus N ``agent.send`` on a ``LocalHub``. The call returns after
  every member's handler ran (in the sender's thread): that is "until every handler ran". The
  sender's cost is measured in a call of its own during which the members' receive only keeps
  the envelope (run right after, untimed): seal, hand to the hub and the hub's routing.
* ``network``: a real hub process; the sender's call (seal and hand the one upload, or the N
  envelopes, to the agent's link) and the time until every member's handler ran.

The target (``TARGET_SENDER_RATIO``): at 100 members, the sender's cost of a group message at
least 20 times lower than the same fan-out with pairwise sends, on each hub.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

from agentmesh import Agent, LocalHub
from agentmesh import crypto as c

PAYLOAD = {"text": "x" * 52}  # 64 B of compact JSON
#: Group sizes measured.
SIZES = [10, 100]
#: At the largest size: pairwise sender cost / group sender cost, at least.
TARGET_SENDER_RATIO = 20.0


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def crypto_figures(sizes: list[int], rounds: int) -> dict[str, Any]:
    alice = c.AgentKeyPair.generate("alice")
    out: dict[str, Any] = {}
    for n in sizes:
        names = [f"m{i}" for i in range(n)]
        keys = {m: c.AgentKeyPair.generate(m) for m in names}
        pairwise = {}
        for m in names:
            a = c.perform_key_exchange(alice, keys[m].public_bundle())
            b = c.perform_key_exchange(keys[m], alice.public_bundle())
            b.unseal(a.seal({"hello": 1}))
            a.unseal(b.seal({"hello": 2}))
            pairwise[m] = a
        group = c.GroupSession(alice, "bench")
        group.distribution()
        group_t, pair_t = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            group.seal(PAYLOAD).to_unaddressed_bytes()
            group_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for m in names:
                pairwise[m].seal(PAYLOAD)
            pair_t.append(time.perf_counter() - t0)
        g, p = _median_us(group_t), _median_us(pair_t)
        out[str(n)] = {"group_us": g, "pairwise_us": p, "ratio": round(p / g, 1)}
    bob = c.AgentKeyPair.generate("bob")
    sender, receiver = c.GroupSession(alice, "bench"), c.GroupSession(bob, "bench")
    receiver.install(sender.distribution(), "alice", bytes(alice.identity_key))
    both = []
    for _ in range(rounds * 5):
        t0 = time.perf_counter()
        receiver.open(sender.seal(PAYLOAD).to_bytes_for("bob"))
        both.append(time.perf_counter() - t0)
    out["group_seal_and_open_64B_us"] = _median_us(both)
    out["megolm_encrypt_and_decrypt_64B_us"] = _megolm_us(rounds * 5)
    return out


def _megolm_us(rounds: int) -> float | None:
    """vodozemac's Megolm (the Matrix group ratchet: AES-256-CBC + HMAC-SHA-256 per message and
    an Ed25519 signature over it, checked on decrypt), through its Python bindings, on the same
    64 B; None when the ``vodozemac`` package is not installed."""
    try:
        import vodozemac
    except ImportError:
        return None
    outbound = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(outbound.session_key)
    plaintext = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    both = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        inbound.decrypt(outbound.encrypt(plaintext))
        both.append(time.perf_counter() - t0)
    return _median_us(both)


def _team(
    hub: Any, prefix: str, n: int, counter: list[int], done: threading.Event, want: list[int]
) -> Any:
    lock = threading.Lock()

    def handler(_msg: Any) -> None:
        with lock:
            counter[0] += 1
            if counter[0] >= want[0]:
                done.set()

    members = []
    for i in range(n):
        agent = Agent(f"{prefix}m{i}", hub=hub)
        agent.on_message(handler)
        members.append(agent)
    return members


class _Held:
    """On a LocalHub the sender's call runs every member's receive (unseal, handlers) in its
    thread. While held (``hold``), a member's receive only keeps what arrives (a list's
    ``append``, so the measurement costs next to nothing), so that the call measures the
    sender's own part: seal, hand to the hub, the hub's routing. ``release`` then runs the
    receives kept."""

    def __init__(self, hub: Any, names: list[str]) -> None:
        self.cores = [hub.local_agent(name) for name in names]
        self.kept: list[list[Any]] = [[] for _ in names]

    #: the core's ways in: LocalHub hands a pairwise envelope to ``receive_pairwise`` and
    #: anything else to ``receive``
    WAYS_IN = ("receive", "receive_pairwise")

    def hold(self) -> None:
        for core, kept in zip(self.cores, self.kept, strict=True):
            for way in self.WAYS_IN:
                setattr(core, way, kept.append)

    def release(self) -> None:
        for core, kept in zip(self.cores, self.kept, strict=True):
            for way in self.WAYS_IN:
                delattr(core, way)  # (the class's again)
            for envelope in kept:
                core.receive(envelope)
            kept.clear()


def agent_figures(hub: Any, sizes: list[int], rounds: int, settle: float) -> dict[str, Any]:
    """Per size: the sender's cost (its call; on a LocalHub without the members' receive it
    would run, see ``_Held``) and the time until every member's handler ran, group and
    pairwise."""
    out: dict[str, Any] = {}
    for n in sizes:
        out[str(n)] = _figures(hub, n, rounds, settle)
    return out


def _figures(hub: Any, n: int, rounds: int, settle: float) -> dict[str, Any]:
    counter, done, want = [0], threading.Event(), [0]
    # (ids stay bound to their keys on a network hub: each size has its own)
    prefix = f"n{n}-"
    alice = Agent(f"{prefix}alice", hub=hub)
    members = _team(hub, prefix, n, counter, done, want)
    names = [m.agent_id for m in members]
    group = alice.create_group("bench", members=names)
    time.sleep(settle)
    # warm up: sessions set up, sender keys handed out
    group.send_payload(PAYLOAD)
    for m in names:
        alice.send_payload(m, PAYLOAD)
    alice.flush(30)
    time.sleep(settle)
    results: dict[str, list[float]] = {"group": [], "pairwise": []}
    handled: dict[str, list[float]] = {"group": [], "pairwise": []}
    held = _Held(hub, names) if isinstance(hub, LocalHub) else None

    def send(kind: str) -> float:
        counter[0] = 0
        want[0] = n
        done.clear()
        t0 = time.perf_counter()
        if kind == "group":
            group.send_payload(PAYLOAD)
        else:
            for m in names:
                alice.send_payload(m, PAYLOAD)
        return t0

    for _ in range(rounds):
        for kind in ("group", "pairwise"):
            if held is not None:  # the sender's part alone, then the members catch up
                held.hold()
                t0 = send(kind)
                results[kind].append(time.perf_counter() - t0)
                held.release()
            t0 = send(kind)
            if held is None:
                results[kind].append(time.perf_counter() - t0)
            if not done.wait(60):
                raise RuntimeError(f"{kind}: only {counter[0]} of {n} handlers ran")
            handled[kind].append(time.perf_counter() - t0)
    g, p = _median_us(results["group"]), _median_us(results["pairwise"])
    figures = {
        "sender_group_us": g,
        "sender_pairwise_us": p,
        "sender_ratio": round(p / g, 1),
        "all_handled_group_us": _median_us(handled["group"]),
        "all_handled_pairwise_us": _median_us(handled["pairwise"]),
    }
    for agent in [alice, *members]:
        agent.close()
    return figures


def run(quick: bool, network: bool = True) -> dict[str, Any]:
    """Every figure of the section, in one run (see the module)."""
    rounds = 5 if quick else 20
    report: dict[str, Any] = {
        "payload_bytes": 64,
        "crypto": crypto_figures(SIZES, rounds),
        "localhub": agent_figures(LocalHub(), SIZES, rounds, 0.0),
    }
    if network:
        import tempfile
        from pathlib import Path

        from agentmesh.hubs import NetworkHub
        from agentmesh.testing import HubProcess

        with (
            tempfile.TemporaryDirectory() as tmp,
            HubProcess(Path(tmp) / "hub.sqlite3", 0, log_level="warning").start() as proc,
        ):
            net = NetworkHub("127.0.0.1", proc.port)
            try:
                report["network"] = agent_figures(net, SIZES, max(3, rounds // 2), 0.5)
            finally:
                net.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.groups", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-network", action="store_true", help="skip the real hub process")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(run(args.quick, not args.no_network), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
