"""The agent layer's network figures: real ``Agent`` objects, a real hub process, loopback.

Measures, with 64-byte payloads (the compact JSON of the payload dict is 64 bytes):

* **one-way**: messages/second counted in the receiver's ``on_message`` handler; three processes
  (sender agent, hub, receiver agent). The clock runs from the first timed message to the last
  one reaching the receiver's handler (after a warm-up), so it is the end-to-end rate: the
  sender's seal and streaming, the hub's routing and durable store (default ``synchronous=FULL``),
  the receiver's unseal, handler and acknowledgement.
* **ping-pong**: Agent A sends, B's handler replies, A's handler records the round-trip time
  (``perf_counter`` just before ``send`` to the start of A's handler). Three processes again.
* **request/reply**: ``A.request(...)`` answered by ``msg.reply(...)`` in B's handler, timed
  from the call to its return, interleaved with the ping-pong runs, and compared with the
  ping-pong timed the same way, until the sending thread has the answer (the ratio's target:
  1.1; the ping-pong's own figure is stamped in A's handler, one thread hand-off earlier).
* the same two figures for ``LocalHub`` with both agents in one process.

Each in signed mode (the default: an Ed25519 signature on every message) and deniable mode
(``Agent(..., deniable=True)``). Optionally (``--persistent``) the one-way and ping-pong figures
again with both agents persistent (``keypair_path``: a receiver writes its state once per
received batch, before the acknowledgement; a send never waits for a write), interleaved with
the plain runs and given as ratios against them, and (``--reference``) the ping-pong through
``HubClient`` directly, with the same crypto on the event loop thread and no agent layer: the
difference to the agent figure is what the agent layer's threads cost; the LocalHub figure is
(nearly) the crypto alone.

``--floor`` adds, from the same run, the two floors no design of this stack can go under: the
crypto of one round trip alone (two ``CryptoSession`` objects in this process, wire bytes in and
out; each message turns the DH ratchet, as post-compromise security requires when the direction
changes), a trivial three-process relay on the agents' event loop (``benches/loop_floor.py``:
no crypto, no store, no threads), and the four thread hand-offs the agent layer's design makes
per round trip (timed as in ``loop_floor.py``). Their sum is what a round trip would cost if the
hub's routing and store, the agent layer's own work and the kernel's scheduling were free; it is
printed next to the p50 target.

The hub is ``python -m agentmesh.hub_server --host 127.0.0.1 --port 0`` with a temporary store; it
and every peer process are stopped by PID (SIGTERM, SIGKILL after a grace period). Usage::

    python benches/network_figures.py                  # table
    python benches/network_figures.py --json           # one JSON object on stdout
    python benches/network_figures.py --count 30000 --round-trips 3000 --repeat 3

Peer processes are this script run with ``--peer ROLE`` (internal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the `benches` package importable
    sys.path.insert(0, str(REPO))

from benches import loop_floor  # noqa: E402
from benches.network import Proc, start_hub  # noqa: E402  (one process runner and hub launcher)

PAYLOAD_BYTES = 64
TARGET_RATE = 10_000.0
TARGET_P50_MS = 0.5
TARGET_P99_MS = 1.0
#: A persistent agent (keypair_path) against one without: its one-way rate at least this share,
#: its round trip p50 at most this multiple (the state write is off the send path).
PERSISTENT_RATE_RATIO = 0.8
PERSISTENT_P50_RATIO = 1.3
#: ``agent.request`` + ``msg.reply`` against a send answered by a send: at most this multiple.
REQUEST_P50_RATIO = 1.1
MODES = ("signed", "deniable")


# --------------------------------------------------------------------------------------------
# payloads


def payload(i: int) -> dict[str, Any]:
    """``{"i": i, "text": "xxx..."}`` whose compact JSON is exactly 64 bytes (for i < 10**20)."""
    base = len(json.dumps({"i": i, "text": ""}, separators=(",", ":")))
    return {"i": i, "text": "x" * (PAYLOAD_BYTES - base)}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def _latency_summary(rtts: list[float]) -> dict[str, Any]:
    ms = sorted(r * 1e3 for r in rtts)
    return {
        "round_trips": len(ms),
        "p50_ms": _percentile(ms, 0.50),
        "p90_ms": _percentile(ms, 0.90),
        "p99_ms": _percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# peer processes (this script with --peer ROLE)


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _network_agent(ns: argparse.Namespace, agent_id: str) -> Any:
    from agentmesh import Agent
    from agentmesh.hubs import NetworkHub

    hub = NetworkHub(HOST, ns.port)
    keypair_path = None
    if ns.state_dir:
        keypair_path = os.path.join(ns.state_dir, f"{agent_id}.key")
    return Agent(agent_id, hub=hub, keypair_path=keypair_path, deniable=ns.mode == "deniable")


def _peer_receiver(ns: argparse.Namespace) -> None:
    agent = _network_agent(ns, ns.id)
    total = ns.warmup + ns.count
    marks: dict[str, float] = {}
    state = {"n": 0, "order_ok": True}
    done = threading.Event()

    @agent.on_message
    def count(msg: Any) -> None:
        n = state["n"]
        if msg.payload.get("i") != n:
            state["order_ok"] = False
        n += 1
        state["n"] = n
        if n == ns.warmup + 1:
            marks["first"] = time.perf_counter()
        if n == total:
            marks["last"] = time.perf_counter()
            done.set()

    @agent.on_error
    def rejected(exc: BaseException) -> None:
        state["rejected"] = state.get("rejected", 0) + 1

    _emit({"ready": agent.agent_id})
    ok = done.wait(ns.timeout)
    result: dict[str, Any] = {
        "received": state["n"],
        "complete": ok,
        "in_order": state["order_ok"],
        "rejected": state.get("rejected", 0),
    }
    if ok and ns.count > 1:
        span = marks["last"] - marks["first"]
        # count - 1 intervals between the first and the last timed message
        result["seconds"] = span
        result["rate"] = (ns.count - 1) / span if span > 0 else float("inf")
    agent.close(10)
    _emit(result)


def _peer_sender(ns: argparse.Namespace) -> None:
    agent = _network_agent(ns, ns.id)
    agent.connect(ns.to)
    send = agent.send_payload
    to = ns.to
    payloads = [payload(i) for i in range(ns.warmup + ns.count)]
    for p in payloads[: ns.warmup]:
        send(to, p)
    agent.flush(ns.timeout)
    time.sleep(0.2)  # let the receiver drain the warm-up
    t0 = time.perf_counter()
    for p in payloads[ns.warmup :]:
        send(to, p)
    t_sent = time.perf_counter()
    agent.flush(ns.timeout)
    t_acked = time.perf_counter()
    agent.close(10)
    _emit(
        {
            "sent": len(payloads),
            "send_rate": ns.count / (t_sent - t0),
            "acked_rate": ns.count / (t_acked - t0),
        }
    )


def _peer_echo(ns: argparse.Namespace) -> None:
    agent = _network_agent(ns, ns.id)
    done = threading.Event()
    total = ns.warmup + ns.count
    state = {"n": 0}

    cpu: dict[str, float] = {}

    @agent.on_message
    def echo(msg: Any) -> None:
        agent.send_payload(msg.sender, msg.payload)
        n = state["n"] = state["n"] + 1
        if n == ns.warmup:
            cpu["start"] = time.process_time()
        if n >= total:
            cpu["end"] = time.process_time()
            done.set()

    _emit({"ready": agent.agent_id})
    ok = done.wait(ns.timeout)
    agent.close(10)
    result: dict[str, Any] = {"echoed": state["n"], "complete": ok}
    if ok and "start" in cpu and ns.count > 0:
        result["cpu_us_per_rt"] = (cpu["end"] - cpu["start"]) / ns.count * 1e6
    _emit(result)


def _peer_ping(ns: argparse.Namespace) -> None:
    agent = _network_agent(ns, ns.id)
    got = threading.Event()
    box: dict[str, float] = {"t0": 0.0, "rtt": 0.0}

    @agent.on_message
    def pong(msg: Any) -> None:
        box["rtt"] = time.perf_counter() - box["t0"]
        got.set()

    agent.connect(ns.to)
    rtts: list[float] = []
    # until the sending thread knows: what a caller waiting for the answer sees (the
    # handler's time stamp comes one thread hand-off earlier)
    caller_rtts: list[float] = []
    send = agent.send_payload
    to = ns.to
    cpu_start = 0.0
    for i in range(ns.warmup + ns.count):
        if i == ns.warmup:
            cpu_start = time.process_time()
        p = payload(i)
        got.clear()
        box["t0"] = t0 = time.perf_counter()
        send(to, p)
        if not got.wait(ns.timeout):
            raise SystemExit(f"no reply to round trip {i} within {ns.timeout} s")
        if i >= ns.warmup:
            caller_rtts.append(time.perf_counter() - t0)
            rtts.append(box["rtt"])
    cpu = time.process_time() - cpu_start
    agent.close(10)
    summary = _latency_summary(rtts)
    summary["caller_p50_ms"] = _latency_summary(caller_rtts)["p50_ms"]
    summary["cpu_us_per_rt"] = cpu / max(1, ns.count) * 1e6
    _emit(summary)


def _peer_answer(ns: argparse.Namespace) -> None:
    """The responder of the request/reply round trip: ``msg.reply`` with the payload."""
    agent = _network_agent(ns, ns.id)
    done = threading.Event()
    total = ns.warmup + ns.count
    state = {"n": 0}

    @agent.on_message
    def answer(msg: Any) -> None:
        msg.reply_payload(msg.payload)
        state["n"] += 1
        if state["n"] >= total:
            done.set()

    _emit({"ready": agent.agent_id})
    ok = done.wait(ns.timeout)
    agent.close(10)
    _emit({"answered": state["n"], "complete": ok})


def _peer_ask(ns: argparse.Namespace) -> None:
    """The caller: ``agent.request`` in a loop, timed from the call to its return."""
    agent = _network_agent(ns, ns.id)
    agent.connect(ns.to)
    rtts: list[float] = []
    request = agent.request_payload
    to = ns.to
    for i in range(ns.warmup + ns.count):
        p = payload(i)
        t0 = time.perf_counter()
        request(to, p, timeout=ns.timeout)
        if i >= ns.warmup:
            rtts.append(time.perf_counter() - t0)
    agent.close(10)
    _emit(_latency_summary(rtts))


def _peer_local(ns: argparse.Namespace) -> None:
    """LocalHub, one process: one-way rate and ping-pong round trips."""
    from agentmesh import Agent, LocalHub

    deniable = ns.mode == "deniable"
    hub = LocalHub()
    alice = Agent("alice", hub=hub, deniable=deniable)
    bob = Agent("bob", hub=hub, deniable=deniable)
    got = [0]
    marks: dict[str, float] = {}

    def count(msg: Any) -> None:
        got[0] += 1

    bob.on_message(count)
    payloads = [payload(i) for i in range(ns.warmup + ns.count)]
    send = alice.send_payload
    for p in payloads[: ns.warmup]:
        send("bob", p)
    marks["t0"] = time.perf_counter()
    for p in payloads[ns.warmup :]:
        send("bob", p)
    elapsed = time.perf_counter() - marks["t0"]
    assert got[0] == len(payloads), got
    one_way = {"rate": ns.count / elapsed, "seconds": elapsed}

    # ping-pong: bob's handler replies, alice's handler records (all inside alice.send)
    box: dict[str, float] = {"t0": 0.0, "rtt": 0.0}

    def echo(msg: Any) -> None:
        bob.send_payload(msg.sender, msg.payload)

    def pong(msg: Any) -> None:
        box["rtt"] = time.perf_counter() - box["t0"]

    bob.on_message(echo)
    alice.on_message(pong)
    rtts = []
    for i in range(ns.rt_warmup + ns.round_trips):
        p = payload(i)
        box["t0"] = time.perf_counter()
        send("bob", p)
        if i >= ns.rt_warmup:
            rtts.append(box["rtt"])
    alice.close()
    bob.close()
    _emit({"one_way": one_way, "ping_pong": _latency_summary(rtts)})


def _peer_raw(ns: argparse.Namespace) -> None:
    """Reference without the agent layer: ``HubClient`` directly, seal and unseal on the event
    loop thread (no worker thread, no hand-off), same keys, modes and payloads. Role ``rawecho``
    answers every envelope; ``rawping`` measures round trips like ``ping``."""
    import asyncio

    from agentmesh.crypto import AgentKeyPair, Envelope, perform_key_exchange, verify_bundle
    from agentmesh.hub_client import HubClient

    async def main() -> dict[str, Any]:
        me = AgentKeyPair.generate(ns.id)
        client = HubClient(HOST, ns.port)
        deniable = ns.mode == "deniable"
        sessions: dict[str, Any] = {}

        async def session_with(peer: str) -> Any:
            sess = sessions.get(peer)
            if sess is None:
                bundle = await client.get_bundle(peer)
                assert bundle is not None and verify_bundle(bundle) == peer
                sess = sessions[peer] = perform_key_exchange(me, bundle, deniable)
            return sess

        total = ns.warmup + ns.count
        if ns.peer == "rawecho":
            done = asyncio.Event()
            state = {"n": 0}

            async def echo(batch: list[tuple[int, bytes]]) -> None:
                for _did, data in batch:
                    env = Envelope.from_bytes(data)
                    sess = await session_with(env.sender)
                    reply = sess.seal(sess.unseal(env))
                    await client.send(env.sender, reply.to_bytes())
                    state["n"] += 1
                if state["n"] >= total:
                    done.set()

            await client.register(me, on_batch=echo)
            _emit({"ready": ns.id})
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(done.wait(), ns.timeout)
            await client.close(10)
            return {"echoed": state["n"]}
        got: asyncio.Queue[float] = asyncio.Queue()

        async def pong(batch: list[tuple[int, bytes]]) -> None:
            for _did, data in batch:
                sessions[ns.to].unseal(data)
                got.put_nowait(time.perf_counter())

        await client.register(me, on_batch=pong)
        sess = await session_with(ns.to)
        rtts: list[float] = []
        for i in range(total):
            p = payload(i)
            t0 = time.perf_counter()
            await client.send(ns.to, sess.seal(p).to_bytes())
            t1 = await asyncio.wait_for(got.get(), ns.timeout)
            if i >= ns.warmup:
                rtts.append(t1 - t0)
        await client.close(10)
        return _latency_summary(rtts)

    from agentmesh._eventloop import new_event_loop

    loop = new_event_loop()  # the loop the agent layer's network thread runs, for a fair reference
    try:
        _emit(loop.run_until_complete(main()))
    finally:
        loop.close()


PEERS = {
    "receiver": _peer_receiver,
    "sender": _peer_sender,
    "echo": _peer_echo,
    "ping": _peer_ping,
    "answer": _peer_answer,
    "ask": _peer_ask,
    "local": _peer_local,
    "rawecho": _peer_raw,
    "rawping": _peer_raw,
}


# --------------------------------------------------------------------------------------------
# the parent: processes


def _peer(role: str, port: int, mode: str, **opts: Any) -> Proc:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", role, "--port", str(port)]
    cmd += ["--mode", mode]
    for key, value in opts.items():
        if value is None:
            continue
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return Proc(cmd)


# --------------------------------------------------------------------------------------------
# the parent: measurements


def one_way(
    port: int, mode: str, count: int, timeout: float, state_dir: str | None
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    rx_id, tx_id = f"rx-{tag}", f"tx-{tag}"
    warmup = min(2000, max(100, count // 10))
    common = {"count": count, "warmup": warmup, "timeout": timeout}
    rx = _peer("receiver", port, mode, id=rx_id, state_dir=state_dir, **common)
    tx: Proc | None = None
    try:
        rx.wait_line(r'"ready"', 60)
        tx = _peer("sender", port, mode, id=tx_id, to=rx_id, state_dir=state_dir, **common)
        sent = tx.result(timeout + 30)
        got = rx.result(timeout + 30)
    finally:
        if tx is not None:
            tx.stop()
        rx.stop()
    if not got.get("complete") or not got.get("in_order") or got.get("rejected"):
        raise RuntimeError(f"receiver: {got}")
    return {
        "rate": got["rate"],
        "count": count,
        "seconds": got["seconds"],
        "sender_send_rate": sent["send_rate"],
        "sender_acked_rate": sent["acked_rate"],
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def ping_pong(
    port: int,
    mode: str,
    round_trips: int,
    timeout: float,
    raw: bool = False,
    hub_pid: int | None = None,
    state_dir: str | None = None,
    request: bool = False,
) -> dict[str, Any]:
    """Round trips between two agent processes: a send answered by a send (or, ``request``,
    ``agent.request`` answered by ``msg.reply``)."""
    tag = uuid.uuid4().hex[:8]
    echo_id, ping_id = f"echo-{tag}", f"ping-{tag}"
    warmup = 200
    common = {"count": round_trips, "warmup": warmup, "timeout": timeout}
    if state_dir is not None:
        common["state_dir"] = state_dir
    prefix = "raw" if raw else ""
    echo_role, ping_role = ("answer", "ask") if request else (prefix + "echo", prefix + "ping")
    echo = _peer(echo_role, port, mode, id=echo_id, **common)
    pinger: Proc | None = None
    try:
        echo.wait_line(r'"ready"', 60)
        hub_cpu = _cpu_seconds(hub_pid) if hub_pid else None
        pinger = _peer(ping_role, port, mode, id=ping_id, to=echo_id, **common)
        res = pinger.result(timeout + 30)
        hub_cpu_end = _cpu_seconds(hub_pid) if hub_pid else None
        echoed = echo.result(timeout + 30)
        # CPU spent per round trip by each of the three processes: on 2 cores their sum
        # is what competes with the round trip's own critical path
        res["cpu_us_per_rt"] = {"ping": res.pop("cpu_us_per_rt", None)}
        res["cpu_us_per_rt"]["echo"] = echoed.get("cpu_us_per_rt")
        if hub_cpu is not None and hub_cpu_end is not None:
            # (includes the pinger's start-up and warm-up: an upper bound)
            res["cpu_us_per_rt"]["hub"] = (hub_cpu_end - hub_cpu) / round_trips * 1e6
    finally:
        if pinger is not None:
            pinger.stop()
        echo.stop()
    return res


def local(mode: str, count: int, round_trips: int, timeout: float) -> dict[str, Any]:
    proc = _peer(
        "local",
        0,
        mode,
        count=count,
        warmup=min(2000, max(100, count // 10)),
        round_trips=round_trips,
        rt_warmup=200,
        timeout=timeout,
    )
    try:
        return proc.result(timeout + 60)
    finally:
        proc.stop()


def crypto_floor(mode: str, round_trips: int) -> dict[str, Any]:
    """One ping-pong's crypto, in this process: A seals, B unseals and seals the reply, A unseals.

    Wire bytes cross between the sessions (as through a hub), the payload is the benchmark's
    64-byte dict, and every message starts a new DH ratchet step because the sender changes."""
    from agentmesh.crypto import AgentKeyPair, perform_key_exchange

    deniable = mode == "deniable"
    a_kp, b_kp = AgentKeyPair.generate("ping"), AgentKeyPair.generate("echo")
    a = perform_key_exchange(a_kp, b_kp.public_bundle(), deniable=deniable)
    b = perform_key_exchange(b_kp, a_kp.public_bundle(), deniable=deniable)
    rtts = []
    for i in range(200 + round_trips):
        t0 = time.perf_counter()
        got = b.unseal(a.seal(payload(i)).to_bytes())
        a.unseal(b.seal(got).to_bytes())
        if i >= 200:
            rtts.append(time.perf_counter() - t0)
    return _latency_summary(rtts)


def relay_floor(round_trips: int) -> dict[str, Any]:
    """A trivial relay round trip between three processes on the agents' event loop."""
    from agentmesh._eventloop import loop_name, new_event_loop

    probe = new_event_loop()
    kind = loop_name(probe)
    probe.close()
    return {"loop": kind, **loop_floor.measure(kind, round_trips)}


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def measure(ns: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "payload_bytes": PAYLOAD_BYTES,
        "count": ns.count,
        "round_trips": ns.round_trips,
        "repeat": ns.repeat,
        "cpus": os.cpu_count(),
        "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "network": {},
        "local": {},
        "floor": {},
        "notes": [],
    }
    timeout = ns.timeout
    with tempfile.TemporaryDirectory(prefix="agentmesh-figures-") as tmp:
        started = start_hub(tmp)
        if isinstance(started, str):
            raise SystemExit(f"cannot start the hub: {started}")
        hub, port = started
        results["hub_pid"] = hub.pid
        try:
            for mode in ns.modes:
                net: dict[str, Any] = {"one_way": [], "ping_pong": [], "request_reply": []}
                if ns.persistent:
                    net["one_way_persistent"] = []
                    net["ping_pong_persistent"] = []
                for r in range(ns.repeat):
                    _log(ns, f"network {mode}: one-way, {ns.count} messages")
                    net["one_way"].append(one_way(port, mode, ns.count, timeout, None))
                    _log(ns, f"network {mode}: ping-pong, {ns.round_trips} round trips")
                    net["ping_pong"].append(
                        ping_pong(port, mode, ns.round_trips, timeout, hub_pid=hub.pid)
                    )
                    _log(ns, f"network {mode}: request/reply, {ns.round_trips} round trips")
                    net["request_reply"].append(
                        ping_pong(port, mode, ns.round_trips, timeout, request=True)
                    )
                    if ns.persistent:
                        # (interleaved with the runs above: same machine state, ratio by ratio)
                        state_dir = os.path.join(tmp, f"state-{mode}-{r}")
                        os.mkdir(state_dir)
                        _log(ns, f"network {mode}: one-way, both agents persistent")
                        net["one_way_persistent"].append(
                            one_way(port, mode, ns.count, timeout, state_dir)
                        )
                        _log(ns, f"network {mode}: ping-pong, both agents persistent")
                        net["ping_pong_persistent"].append(
                            ping_pong(port, mode, ns.round_trips, timeout, state_dir=state_dir)
                        )
                if ns.reference:
                    net["ping_pong_hubclient"] = []
                    for _ in range(ns.repeat):
                        _log(ns, f"HubClient reference {mode}: ping-pong")
                        net["ping_pong_hubclient"].append(
                            ping_pong(port, mode, ns.round_trips, timeout, raw=True)
                        )
                results["network"][mode] = net
                loc: list[dict[str, Any]] = []
                for _ in range(ns.repeat):
                    _log(ns, f"LocalHub {mode}")
                    loc.append(local(mode, ns.count, ns.round_trips, timeout))
                results["local"][mode] = loc
                if ns.floor:
                    _log(ns, f"floors {mode}: crypto round trip, trivial relay")
                    results["floor"][mode] = {
                        "crypto": [crypto_floor(mode, ns.round_trips) for _ in range(ns.repeat)],
                        "relay": [relay_floor(ns.round_trips) for _ in range(ns.repeat)],
                        "handoffs": [loop_floor.handoffs(ns.round_trips) for _ in range(ns.repeat)],
                    }
        finally:
            code = hub.stop()
            if code not in (0, None):
                results["notes"].append(f"hub exited with {code}")
    results["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["summary"] = summarize(results)
    return results


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (hub, mode, figure): the median over the repeats, with the target."""
    rows: list[dict[str, Any]] = []
    for mode, net in results["network"].items():
        rows.append(_rate_row("network", mode, "one-way msg/s", net["one_way"]))
        rows.extend(_latency_rows("network", mode, net["ping_pong"]))
        if net.get("one_way_persistent"):
            rows.extend(_persistent_rows(mode, net))
        rows.append(_cpu_row(mode, net["ping_pong"]))
        if net.get("request_reply"):
            rows.extend(_request_rows(mode, net))
        if net.get("ping_pong_hubclient"):
            rows.extend(_latency_rows("hubclient", mode, net["ping_pong_hubclient"]))
    for mode, loc in results["local"].items():
        rows.append(_rate_row("local", mode, "one-way msg/s", [r["one_way"] for r in loc]))
        rows.extend(_latency_rows("local", mode, [r["ping_pong"] for r in loc]))
    for mode, floor in results["floor"].items():
        rows.extend(_floor_rows(mode, floor))
    return rows


def _floor_rows(mode: str, floor: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The floors (p50, median of the repeats) and their sums. The issue's design hands each
    round trip across threads four times (a send from the caller's thread into the network
    thread and a delivery from the network thread to the handler worker, on each side), so the
    last row, compared with the p50 target, is the least that design can cost here."""
    crypto = _median_of(floor["crypto"], "p50_ms")
    relay = _median_of(floor["relay"], "p50_ms")
    handoffs = statistics.median(
        2 * (h["into_loop_thread_us"] + h["to_worker_thread_us"]) / 1e3 for h in floor["handoffs"]
    )
    total = crypto + relay + handoffs
    return [
        {"hub": "floor", "mode": mode, "figure": "crypto round trip p50 ms", "value": crypto},
        {"hub": "floor", "mode": mode, "figure": "trivial relay p50 ms", "value": relay},
        {"hub": "floor", "mode": mode, "figure": "4 thread hand-offs ms", "value": handoffs},
        {"hub": "floor", "mode": mode, "figure": "crypto + relay ms", "value": crypto + relay},
        {
            "hub": "floor",
            "mode": mode,
            "figure": "crypto + relay + hand-offs ms",
            "value": total,
            "target": f"< {TARGET_P50_MS}",
            "met": total < TARGET_P50_MS,
        },
    ]


def _persistent_rows(mode: str, net: dict[str, Any]) -> list[dict[str, Any]]:
    """Both agents with ``keypair_path`` against neither, as ratios of the medians: a
    persistent agent's sends must not wait for its state writes (PERSISTENT_* targets)."""
    rate = _median_of(net["one_way_persistent"], "rate")
    p50 = _median_of(net["ping_pong_persistent"], "p50_ms")
    rate_ratio = rate / _median_of(net["one_way"], "rate")
    p50_ratio = p50 / _median_of(net["ping_pong"], "p50_ms")
    return [
        _rate_row("network", mode, "one-way msg/s, persistent", net["one_way_persistent"]),
        {
            "hub": "network",
            "mode": mode,
            "figure": "round trip p50 ms, persistent",
            "value": p50,
            "runs": [r["p50_ms"] for r in net["ping_pong_persistent"]],
        },
        {
            "hub": "network",
            "mode": mode,
            "figure": "persistent/plain one-way rate",
            "value": rate_ratio,
            "target": f">= {PERSISTENT_RATE_RATIO}",
            "met": rate_ratio >= PERSISTENT_RATE_RATIO,
        },
        {
            "hub": "network",
            "mode": mode,
            "figure": "persistent/plain round trip p50",
            "value": p50_ratio,
            "target": f"<= {PERSISTENT_P50_RATIO}",
            "met": p50_ratio <= PERSISTENT_P50_RATIO,
        },
    ]


def _request_rows(mode: str, net: dict[str, Any]) -> list[dict[str, Any]]:
    """``request`` + ``msg.reply`` against the plain ping-pong (send answered by a send), on
    the same hub, interleaved: correlation must cost almost nothing (REQUEST_P50_RATIO)."""
    p50 = _median_of(net["request_reply"], "p50_ms")
    p99 = _median_of(net["request_reply"], "p99_ms")
    # both timed until the calling thread has the answer (``caller_p50_ms`` of the ping)
    ratio = p50 / _median_of(net["ping_pong"], "caller_p50_ms")
    return [
        {"hub": "network", "mode": mode, "figure": "request/reply p50 ms", "value": p50},
        {"hub": "network", "mode": mode, "figure": "request/reply p99 ms", "value": p99},
        {
            "hub": "network",
            "mode": mode,
            "figure": "request/reply / ping-pong p50",
            "value": ratio,
            "target": f"<= {REQUEST_P50_RATIO}",
            "met": ratio <= REQUEST_P50_RATIO,
        },
    ]


def _rate_row(hub: str, mode: str, figure: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    value = _median_of(runs, "rate")
    row = {"hub": hub, "mode": mode, "figure": figure, "value": value}
    row["runs"] = [r["rate"] for r in runs]
    if hub == "network" and "persistent" not in figure:
        row["target"] = f">= {TARGET_RATE:,.0f}"
        row["met"] = value >= TARGET_RATE
    return row


def _cpu_row(mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU time per round trip summed over hub, pinger and echo (µs; the parts in "runs")."""
    parts = [r.get("cpu_us_per_rt") or {} for r in runs]
    totals = [sum(v for v in p.values() if v is not None) for p in parts]
    return {
        "hub": "network",
        "mode": mode,
        "figure": "CPU per round trip us (3 procs)",
        "value": statistics.median(totals) if totals else float("nan"),
        "runs": parts,
    }


def _latency_rows(hub: str, mode: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key, label, target in (
        ("p50_ms", "round trip p50 ms", TARGET_P50_MS),
        ("p99_ms", "round trip p99 ms", TARGET_P99_MS),
    ):
        value = _median_of(runs, key)
        row: dict[str, Any] = {"hub": hub, "mode": mode, "figure": label, "value": value}
        row["runs"] = [r[key] for r in runs]
        if hub == "network":
            row["target"] = f"< {target}"
            row["met"] = value < target
        rows.append(row)
    return rows


def print_table(results: dict[str, Any]) -> None:
    print(
        f"agentmesh agent layer over loopback: {results['payload_bytes']} B payloads, "
        f"{results['count']} one-way messages, {results['round_trips']} round trips, "
        f"{results['cpus']} CPUs, load before {_load(results['loadavg_before'])}, "
        f"after {_load(results['loadavg_after'])}"
    )
    header = f"{'hub':<9} {'mode':<9} {'figure':<30} {'value':>12} {'target':>10}  met"
    print(header)
    print("-" * len(header))
    for row in results["summary"]:
        value = row["value"]
        text = f"{value:,.0f}" if "msg/s" in row["figure"] else f"{value:.3f}"
        met = {True: "yes", False: "NO"}.get(row.get("met"), "")  # type: ignore[call-overload]
        print(
            f"{row['hub']:<9} {row['mode']:<9} {row['figure']:<30} {text:>12} "
            f"{row.get('target', ''):>10}  {met}"
        )
    if results["repeat"] > 1:
        print(f"(medians of {results['repeat']} runs; every run is in --json)")
    for note in results["notes"]:
        print(f"note: {note}")


def _load(values: list[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{v:.2f}" for v in values)


def _log(ns: argparse.Namespace, text: str) -> None:
    if not ns.quiet:
        print(f"... {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--count", type=int, default=20_000, help="timed one-way messages")
    p.add_argument("--round-trips", type=int, default=3_000, help="timed ping-pong round trips")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure (median reported)")
    p.add_argument("--modes", default="signed,deniable", help="comma-separated: signed,deniable")
    p.add_argument(
        "--persistent", action="store_true", help="also both agents persistent (keypair_path)"
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="also ping-pong through HubClient directly (crypto on the event loop, no agent "
        "layer): what the agent layer's threads add",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also the floors under the round trip: its crypto alone and a trivial relay",
    )
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    # internal: peer processes
    p.add_argument("--peer", choices=sorted(PEERS), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, default="signed", help=argparse.SUPPRESS)
    p.add_argument("--id", help=argparse.SUPPRESS)
    p.add_argument("--to", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=200, help=argparse.SUPPRESS)
    p.add_argument("--rt-warmup", type=int, default=200, help=argparse.SUPPRESS)
    p.add_argument("--state-dir", help=argparse.SUPPRESS)
    return p


def run(quick: bool) -> dict[str, Any]:
    """The figures as ``python -m benches`` takes them: signed and deniable, plain and
    persistent agents interleaved; quick: fewer messages."""
    args = ["-q", "--persistent"]
    if quick:
        args += ["--count", "4000", "--round-trips", "500"]
    ns = parser().parse_args(args)
    ns.modes = list(MODES)
    return measure(ns)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    ns = p.parse_args(argv)
    if ns.peer:
        PEERS[ns.peer](ns)
        return 0
    ns.modes = [m.strip() for m in ns.modes.split(",") if m.strip()]
    bad = [m for m in ns.modes if m not in MODES]
    if bad or not ns.modes:
        p.error(f"--modes: unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    if ns.count < 2 or ns.round_trips < 1 or ns.repeat < 1:
        p.error("--count must be >= 2, --round-trips and --repeat >= 1")
    results = measure(ns)
    if ns.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
