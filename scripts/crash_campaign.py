#!/usr/bin/env python3
"""Crash campaign: SIGKILL a real hub under steady traffic, many times, and count what was lost.

A hub process (``python -m agentmesh.hub_server --host 127.0.0.1 --port P --store DIR/hub.db``)
carries traffic from several sender processes to one or more receiver processes. Every peer is an
``Agent`` on a ``NetworkHub`` with a ``keypair_path`` (so its sessions persist), and each runs in
its own process (this file, with a role argument):

* a **sender** sends numbered messages (``{"n": N}``) in small random batches, round robin over
  the receivers, and calls ``flush()`` after each batch. When ``flush()`` returns, every number
  sent so far is *acknowledged* (durably accepted by the hub) and is appended to its ack file.
  A ``flush()`` that times out acknowledges nothing; a later successful one covers it.
* a **receiver** appends ``sender n message-id time`` to its file for every message its handler
  gets (written and flushed per message), and every rejection (replays, ...) to an error file.

The hub is killed with SIGKILL at random moments (seeded; every ``--min-interval`` to
``--max-interval`` seconds, default 0.2-1.5 s), ``--kills`` times (default 100), and restarted on
the same port and store after a short random downtime. The peers are never told: their hub
clients reconnect by themselves (exponential backoff), re-register, resend what the hub did not
acknowledge, and resume receiving.

At the end the senders are stopped (a last flush), the receivers drain until every acknowledged
message arrived or nothing moved for ``--quiet`` seconds (bounded by ``--drain-timeout``), and
the campaign reports:

* acknowledged: numbers whose ``flush()`` returned;
* delivered: distinct numbers that reached a receiver's handler;
* lost: acknowledged but never delivered to a handler (must be 0);
* duplicates: delivered to a handler more than once (must be 0);
* delivered but not acknowledged: sent, flushed in vain (the hub died first) and delivered
  anyway. That is fine: the hub had stored (or live-delivered) it before the crash;
* rejections at the receivers: a hub crash can make the hub deliver an envelope again that a
  handler already got (live delivery happens before the commit; the sender resends). The same
  receiver object skips it silently; a receiver restarted in between refuses it as a replay
  (``ReplayError`` to ``on_error``). Any other rejection, or a replay of a message no handler
  got, is reported.

With ``--agents-per-receiver N`` each receiver process hosts N agents (ids ``receiverI-aJ``,
one identity file each), which share its receive workers and its hub connection, and the
senders send round robin over all of them: under load their batches are unsealed in joint
passes, so the campaign checks those passes' persistence rules too.

By default each receiver also goes offline now and then (``--receiver-cycle``: a clean
``close()`` and a new ``Agent`` on the same ``keypair_path``), so that part of the traffic is
queued in the hub's store rather than delivered live.

Exit status: 0 when lost == 0, duplicates == 0 and every rejection is a replay of a handled
message; 1 when not; 2 when the campaign itself could not run (a peer died, the hub would not
restart); 130 when interrupted. Everything listens on and talks to 127.0.0.1
only; every process started is stopped by its PID at the end, also on Ctrl-C.

    python scripts/crash_campaign.py --kills 100 --seed 1 --json crash.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


# ============================================================================================
# peer roles (run in their own processes)


def _install_stop_handler() -> threading.Event:
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


class _ClientStats(logging.Handler):
    """Counts, from the hub client's own debug log, what the crashes made it do: reconnects,
    envelopes resent after a reconnect, redeliveries recognised and skipped."""

    _RESENT = re.compile(r"\((\d+) resent")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        fmt = str(record.msg)
        if "reconnected to hub" in fmt:
            self.counts["reconnects"] += 1
        elif "resent" in fmt:
            m = self._RESENT.search(record.getMessage())
            if m:
                self.counts["resent"] += int(m.group(1))
        elif "duplicate delivery" in fmt or "redelivery" in fmt:
            self.counts["redeliveries_skipped"] += 1

    @classmethod
    def install(cls) -> _ClientStats:
        handler = cls()
        for name in ("agentmesh.hub_client", "agentmesh.hubs"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.addHandler(handler)
        warn = logging.StreamHandler(sys.stderr)  # warnings and errors still go to the log file
        warn.setLevel(logging.WARNING)
        warn.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("agentmesh").addHandler(warn)
        return handler


def _retry(what: str, fn: Any, deadline: float) -> Any:
    """Call ``fn`` until it succeeds (the hub may be restarting) or ``deadline`` passes."""
    while True:
        try:
            return fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            print(f"{what}: {type(exc).__name__}: {exc}; retrying", file=sys.stderr, flush=True)
            time.sleep(0.5)


def run_sender(ns: argparse.Namespace) -> int:
    from agentmesh import Agent, FlushTimeoutError, NetworkHub

    stop = _install_stop_handler()
    stats = _ClientStats.install()
    rng = random.Random(ns.seed)
    receivers = ns.receivers.split(",")
    deadline = time.monotonic() + 60
    hub = NetworkHub(HOST, ns.port, connect_timeout=10.0, timeout=60.0)
    agent = _retry("register", lambda: Agent(ns.id, hub=hub, keypair_path=ns.key), deadline)
    for r in receivers:  # sessions up front: afterwards sending needs no lookup at all
        _retry(f"connect {r}", lambda r=r: agent.connect(r), deadline)
    print("READY", flush=True)

    acks = open(ns.acks, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    n = 0
    pending: list[int] = []
    acked = 0
    timeouts = 0
    errors: list[str] = []
    uncertain = 0
    longest_flush = 0.0
    interval_per_msg = 1.0 / ns.rate
    next_t = time.monotonic()

    def flush(timeout: float) -> bool:
        nonlocal acked, timeouts, uncertain, longest_flush
        if not pending:
            return True
        t0 = time.monotonic()
        try:
            agent.flush(timeout=timeout)
        except FlushTimeoutError:
            timeouts += 1
            return False
        except Exception as exc:  # a refusal: which envelope is not known, so none counts
            errors.append(f"{type(exc).__name__}: {exc}")
            print(f"flush failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            uncertain += len(pending)
            pending.clear()
            return False
        longest_flush = max(longest_flush, time.monotonic() - t0)
        now = time.time()
        acks.write("".join(f"{k} {now:.6f}\n" for k in pending))
        acks.flush()
        acked += len(pending)
        pending.clear()
        return True

    while not stop.is_set():
        batch = rng.randint(1, ns.batch)
        for _ in range(batch):
            n += 1
            agent.send(receivers[n % len(receivers)], n=n)
            pending.append(n)
        flush(ns.flush_timeout)
        # --rate messages/s on average; time lost waiting for a restarted hub is not made up
        next_t = max(next_t + batch * interval_per_msg, time.monotonic() - 0.5)
        stop.wait(max(0.0, next_t - time.monotonic()))
    flush(ns.final_timeout)
    close_error = ""
    try:
        agent.close(timeout=10.0)
    except Exception as exc:
        close_error = f"{type(exc).__name__}: {exc}"
    acks.close()
    print(
        json.dumps(
            {
                "id": ns.id,
                "sent": n,
                "acked": acked,
                "unacked_at_end": len(pending),
                "flush_timeouts": timeouts,
                "errors": errors[:20],
                "error_count": len(errors),
                "uncertain": uncertain,
                "longest_flush_s": round(longest_flush, 3),
                "close_error": close_error,
                **stats.counts,
            }
        ),
        flush=True,
    )
    return 0


def receiver_agent_ids(process: str, agents: int) -> list[str]:
    """The ids of a receiver process's agents (``--agents``: several share its process, its
    receive workers and its hub connection)."""
    return [process] if agents <= 1 else [f"{process}-a{j}" for j in range(agents)]


def run_receiver(ns: argparse.Namespace) -> int:
    from agentmesh import Agent, NetworkHub

    stop = _install_stop_handler()
    stats = _ClientStats.install()
    rng = random.Random(ns.seed)
    hub = NetworkHub(HOST, ns.port, connect_timeout=10.0, timeout=60.0)
    out = open(ns.out, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    err = open(ns.errors, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    rejected: collections.Counter[str] = collections.Counter()
    handled = 0
    restarts = 0
    close_errors: list[str] = []

    written = threading.Lock()  # (with --agents > 1, handlers of several agents run at once)

    def handle(msg: Any) -> None:  # runs on a receive worker, one message of an agent at a time
        nonlocal handled
        line = f"{msg.sender} {msg.payload.get('n')} {msg.id} {time.time():.6f} {restarts}\n"
        with written:
            out.write(line)
            out.flush()
            handled += 1

    def on_error(exc: BaseException) -> None:
        name = type(exc).__name__
        rejected[name] += 1
        env = getattr(exc, "envelope", None)
        env_id = getattr(env, "id", None) if env is not None else None
        err.write(
            f"{name} {getattr(exc, 'sender', None)} {env_id} {time.time():.6f} {restarts} {exc}\n"
        )
        err.flush()

    ids = receiver_agent_ids(ns.id, ns.agents)

    def open_agents() -> list[Any]:
        def make(agent_id: str, key: str) -> Any:
            agent = Agent(agent_id, hub=hub, keypair_path=key)
            agent.on_error(on_error)
            agent.on_message(handle)  # deliveries start with the first handler
            return agent

        return [
            _retry(
                "register",
                lambda i=i: make(i, ns.key if len(ids) == 1 else f"{ns.key}.{i}"),
                time.monotonic() + 60,
            )
            for i in ids
        ]

    def close_agents(agents: list[Any]) -> None:
        for agent in agents:
            try:
                agent.close(timeout=10.0)
            except Exception as exc:
                close_errors.append(f"{type(exc).__name__}: {exc}")

    agents = open_agents()
    print("READY", flush=True)
    # With --cycle-max > 0 the receiver goes offline now and then (a clean close, then a new
    # Agent on the same keypair_path): meanwhile its messages wait in the hub's store.
    while ns.cycle_max > 0 and not stop.wait(rng.uniform(ns.cycle_min, ns.cycle_max)):
        close_agents(agents)
        print(f"{time.time():.6f} closed (incarnation {restarts})", file=sys.stderr, flush=True)
        stop.wait(rng.uniform(0.0, ns.down_max))
        restarts += 1
        agents = open_agents()
        print(f"{time.time():.6f} open (incarnation {restarts})", file=sys.stderr, flush=True)
    stop.wait()
    close_agents(agents)
    out.close()
    err.close()
    print(
        json.dumps(
            {
                "id": ns.id,
                "handled": handled,
                "rejected": dict(rejected),
                "restarts": restarts,
                "close_error": "; ".join(close_errors[:5]),
                **stats.counts,
            }
        ),
        flush=True,
    )
    return 0


# ============================================================================================
# the orchestrator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class CampaignError(Exception):
    """The campaign could not run as planned (not a finding about the hub)."""


class Peer:
    """A sender or receiver process; its stdout is read for READY and the result line."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed by wait())
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=_child_env(),
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.result: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.result = json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(10)
        with contextlib.suppress(Exception):
            self.log.close()
        return self.proc.returncode


def _launcher() -> Any:
    """``agentmesh.testing``: the hub launcher the tests and benchmarks use, and the child
    environment that imports the same agentmesh. Imported when a campaign starts, so that
    ``--help`` works anywhere."""
    try:
        from agentmesh import testing
    except ImportError:  # not installed: this checkout's python/ (with a built extension)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
        from agentmesh import testing
    return testing


def _child_env() -> dict[str, str]:
    env: dict[str, str] = _launcher().subprocess_env()
    return env


def _read_acks(path: Path) -> dict[int, float]:
    acked: dict[int, float] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2:
                acked[int(parts[0])] = float(parts[1])
    return acked


def _read_deliveries(path: Path) -> list[tuple[str, int, str, float]]:
    out: list[tuple[str, int, str, float]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 4:
                out.append((parts[0], int(parts[1]), parts[2], float(parts[3])))
    return out


class Campaign:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.seed = ns.seed if ns.seed is not None else random.SystemRandom().randrange(1 << 32)
        self.rng = random.Random(self.seed)
        if ns.workdir:
            self.dir = Path(ns.workdir).resolve()
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="agentmesh-crash-"))
        self.port = ns.port or free_port()
        self.senders = [f"sender{i}" for i in range(ns.senders)]
        self.receivers = [f"receiver{i}" for i in range(ns.receivers)]
        # In its own session: a Ctrl-C reaches the campaign, which stops the hub by its pid.
        self.hub = _launcher().HubProcess(
            self.dir / "hub.db",
            self.port,
            extra_args=["--synchronous", ns.synchronous],
            log_level=ns.hub_log_level,
            log_file=self.dir / "hub.log",
            keep_lines=50,
            new_session=True,
        )
        self.hub_start_times: list[float] = []
        self.peers: dict[str, Peer] = {}
        self.stopping: set[str] = set()  # peers told to stop (their exit is expected)
        self.kills: list[dict[str, float]] = []
        self.t0 = 0.0

    def start_hub(self) -> float:
        """Start the hub (again, on the same port and store); returns how long it took."""
        t0 = time.monotonic()
        try:
            self.hub.start()
        except RuntimeError as exc:
            raise CampaignError(str(exc)) from None
        took = time.monotonic() - t0
        self.hub_start_times.append(took)
        return took

    # ---- files -------------------------------------------------------------------------------

    def acks_path(self, sender: str) -> Path:
        return self.dir / f"{sender}.acks"

    def out_path(self, receiver: str) -> Path:
        return self.dir / f"{receiver}.delivered"

    def acked(self) -> dict[tuple[str, int], float]:
        return {(s, n): t for s in self.senders for n, t in _read_acks(self.acks_path(s)).items()}

    def delivered(self) -> list[tuple[str, int, str, float]]:
        return [d for r in self.receivers for d in _read_deliveries(self.out_path(r))]

    # ---- processes ---------------------------------------------------------------------------

    def start_peer(self, name: str, args: list[str]) -> Peer:
        peer = Peer(name, args, self.dir / f"{name}.log")
        self.peers[name] = peer
        return peer

    def wait_ready(self, names: list[str], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            peer = self.peers[name]
            while not peer.ready.wait(0.1):
                if not peer.alive():
                    raise CampaignError(f"{name} exited with {peer.proc.returncode} at start-up")
                if time.monotonic() > deadline:
                    raise CampaignError(f"{name} was not ready within {timeout}s")

    def check_peers(self) -> None:
        for name, peer in self.peers.items():
            if name not in self.stopping and not peer.alive():
                raise CampaignError(
                    f"{name} exited with {peer.proc.returncode} during the campaign "
                    f"(see {self.dir / (name + '.log')})"
                )

    def sleep_watching(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))
            self.check_peers()

    def stop_everything(self) -> None:
        """Stop every process this campaign started, by PID: SIGTERM, then SIGKILL."""
        for peer in self.peers.values():
            peer.terminate()
        for peer in self.peers.values():
            peer.wait(15.0)
        with contextlib.suppress(Exception):
            self.hub.stop(15.0)
        self.hub.close()

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        ns = self.ns
        self.t0 = time.monotonic()
        self.start_hub()
        port = str(self.port)
        for i, r in enumerate(self.receivers):
            self.start_peer(r, [
                "_receiver", "--port", port, "--id", r, "--key", str(self.dir / f"{r}.key"),
                "--out", str(self.out_path(r)), "--errors", str(self.dir / f"{r}.errors"),
                "--cycle-min", str(ns.receiver_cycle[0]), "--cycle-max", str(ns.receiver_cycle[1]),
                "--down-max", str(ns.receiver_down), "--seed", str(self.seed * 1000 + 500 + i),
                "--agents", str(ns.agents_per_receiver),
            ])  # fmt: skip
        self.wait_ready(self.receivers)
        for i, s in enumerate(self.senders):
            self.start_peer(s, [
                "_sender", "--port", port, "--id", s, "--key", str(self.dir / f"{s}.key"),
                "--acks", str(self.acks_path(s)),
                "--receivers", ",".join(
                    a for r in self.receivers for a in receiver_agent_ids(r, ns.agents_per_receiver)
                ),
                "--rate", str(ns.rate), "--batch", str(ns.batch),
                "--flush-timeout", str(ns.flush_timeout), "--final-timeout", str(ns.drain_timeout),
                "--seed", str(self.seed * 1000 + i),
            ])  # fmt: skip
        self.wait_ready(self.senders)
        ready_at = time.monotonic()
        print(
            f"campaign: {ns.kills} kills, {len(self.senders)} senders -> "
            f"{len(self.receivers)} receivers, ~{ns.rate:g} msg/s per sender, seed {self.seed}, "
            f"port {self.port}, dir {self.dir}",
            flush=True,
        )
        for k in range(1, ns.kills + 1):
            self.sleep_watching(self.rng.uniform(ns.min_interval, ns.max_interval))
            if not self.hub.alive():
                raise CampaignError(f"the hub died by itself before kill {k} (see hub.log)")
            killed_at = time.monotonic()
            self.hub.kill()
            self.sleep_watching(self.rng.uniform(0.0, ns.max_down))
            took = self.start_hub()
            self.kills.append(
                {"kill": k, "at_s": round(killed_at - self.t0, 3), "restart_s": round(took, 3)}
            )
            if k % 10 == 0 or k == ns.kills:
                acked, delivered = self.acked(), self.delivered()
                print(
                    f"  {k:4d} kills, {time.monotonic() - self.t0:7.1f} s: "
                    f"{len(acked)} acknowledged, {len(delivered)} delivered",
                    flush=True,
                )
        traffic_s = time.monotonic() - ready_at

        # Stop the senders (each does a last flush), then let the receivers drain.
        for s in self.senders:
            self.stopping.add(s)
            self.peers[s].terminate()
        for s in self.senders:
            code = self.peers[s].wait(ns.drain_timeout + 30.0)
            if code != 0:
                raise CampaignError(f"{s} exited with {code} (see {s}.log)")
        drain_start = time.monotonic()
        acked = self.acked()
        last_count, last_change = -1, time.monotonic()
        while True:
            delivered = self.delivered()
            keys = {(d[0], d[1]) for d in delivered}
            if not set(acked) - keys:
                break  # everything acknowledged arrived; a few more seconds for duplicates
            if len(delivered) != last_count:
                last_count, last_change = len(delivered), time.monotonic()
            now = time.monotonic()
            if now - last_change > ns.quiet or now - drain_start > ns.drain_timeout:
                break
            self.sleep_watching(0.25)
        self.sleep_watching(min(ns.quiet, 2.0))  # a late duplicate would show up here
        drain_s = time.monotonic() - drain_start
        for r in self.receivers:
            self.stopping.add(r)
            self.peers[r].terminate()
        for r in self.receivers:
            self.peers[r].wait(30.0)
        hub_exit = self.hub.stop(30.0)
        return self.report(traffic_s, drain_s, hub_exit)

    def report(self, traffic_s: float, drain_s: float, hub_exit: int | None) -> dict[str, Any]:
        acked = self.acked()
        delivered = self.delivered()
        counts = collections.Counter((s, n) for s, n, _id, _t in delivered)
        first_at: dict[tuple[str, int], float] = {}
        for s, n, _id, t in delivered:
            first_at.setdefault((s, n), t)
        lost = sorted(set(acked) - set(counts))
        dups = sorted(k for k, c in counts.items() if c > 1)
        unacked_delivered = sorted(set(counts) - set(acked))
        # live delivery happens before the commit, so a handler often runs before the flush returns
        before_ack = sum(1 for k, t in first_at.items() if k in acked and t < acked[k])
        sent = 0
        sender_results = {}
        for s in self.senders:
            res = self.peers[s].result or {}
            sender_results[s] = res
            sent += int(res.get("sent", 0))
        receiver_results = {r: (self.peers[r].result or {}) for r in self.receivers}
        rejected: collections.Counter[str] = collections.Counter()
        for res in receiver_results.values():
            rejected.update(res.get("rejected", {}))
        kill_walls = [k["at_s"] for k in self.kills]
        # every rejection should be a replay of a message a handler already got (a redelivery
        # after a hub crash that reached a new incarnation of the receiver)
        handled_ids = {mid for _s, _n, mid, _t in delivered}
        rejections = [
            line.split()
            for r in self.receivers
            if (self.dir / f"{r}.errors").exists()
            for line in (self.dir / f"{r}.errors").read_text(encoding="utf-8").splitlines()
        ]
        odd_rejections = [
            " ".join(parts[:3])
            for parts in rejections
            if len(parts) < 3 or parts[0] != "ReplayError" or parts[2] not in handled_ids
        ]
        # ... and was it refused by the same receiver object that had handled it (that one
        # should have skipped it silently) or by a later one (after a close and a re-open)?
        handled_by = {}
        for r in self.receivers:
            for line in self.out_path(r).read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) >= 5:
                    handled_by[parts[2]] = (r, parts[4])
        same_incarnation = sum(
            1
            for parts in rejections
            if len(parts) >= 5 and handled_by.get(parts[2], ("", ""))[1] == parts[4]
        )
        client: collections.Counter[str] = collections.Counter()
        for res in [*sender_results.values(), *receiver_results.values()]:
            for key in ("reconnects", "resent", "redeliveries_skipped", "restarts"):
                client[key] += int(res.get(key, 0))
        result: dict[str, Any] = {
            "ok": not lost and not dups and not odd_rejections,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "seed": self.seed,
            "kills": len(self.kills),
            "senders": len(self.senders),
            "receivers": len(self.receivers),
            "agents_per_receiver": self.ns.agents_per_receiver,
            "synchronous": self.ns.synchronous,
            "rate_per_sender": self.ns.rate,
            "duration_s": round(time.monotonic() - self.t0, 1),
            "traffic_s": round(traffic_s, 1),
            "drain_s": round(drain_s, 1),
            "sent": sent,
            "acknowledged": len(acked),
            "delivered": len(counts),
            "deliveries": len(delivered),
            "lost": len(lost),
            "duplicates": len(dups),
            "unacknowledged_delivered": len(unacked_delivered),
            "delivered_before_ack": before_ack,
            "rejected_at_receivers": dict(rejected),
            "rejected_not_replays_of_handled": len(odd_rejections),
            "replays_refused_by_the_same_receiver_object": same_incarnation,
            "rejected_not_replays_sample": odd_rejections[:20],
            "receiver_restarts": client["restarts"],
            "client_reconnects": client["reconnects"],
            "client_resent_after_reconnect": client["resent"],
            "client_redeliveries_skipped": client["redeliveries_skipped"],
            "hub_restart_s": {
                "mean": round(sum(self.hub_start_times) / max(1, len(self.hub_start_times)), 3),
                "max": round(max(self.hub_start_times, default=0.0), 3),
            },
            "hub_clean_exit_code": hub_exit,
            "senders_detail": sender_results,
            "receivers_detail": receiver_results,
            "lost_sample": [f"{s}#{n}" for s, n in lost[:50]],
            "duplicates_sample": [
                {"msg": f"{s}#{n}", "times": counts[(s, n)]} for s, n in dups[:50]
            ],
            "workdir": str(self.dir),
            "kill_times_s": kill_walls,
        }
        return result


def print_summary(res: dict[str, Any]) -> None:
    rows = [
        ("kills (SIGKILL + restart)", res["kills"]),
        ("duration", f"{res['duration_s']} s (traffic {res['traffic_s']} s, "
                     f"drain {res['drain_s']} s)"),
        ("senders -> receivers", f"{res['senders']} -> {res['receivers']}"
                                 f" (x{res['agents_per_receiver']} agents each)"),
        ("sent", res["sent"]),
        ("acknowledged (flush returned)", res["acknowledged"]),
        ("delivered to a handler", res["delivered"]),
        ("lost (acked, never delivered)", res["lost"]),
        ("duplicates (delivered twice)", res["duplicates"]),
        ("delivered, not acknowledged", res["unacknowledged_delivered"]),
        ("delivered before its ack", res["delivered_before_ack"]),
        ("rejected at receivers", ", ".join(f"{k} {v}" for k, v in
                                            sorted(res["rejected_at_receivers"].items())) or "0"),
        ("  of which not a replay of a handled one", res["rejected_not_replays_of_handled"]),
        ("  replays seen by the object that handled it",
         res["replays_refused_by_the_same_receiver_object"]),
        ("receiver restarts (offline spells)", res["receiver_restarts"]),
        ("hub-client reconnects", res["client_reconnects"]),
        ("envelopes resent after a reconnect", res["client_resent_after_reconnect"]),
        ("redeliveries skipped by receivers", res["client_redeliveries_skipped"]),
        ("hub restart (mean / max)", f"{res['hub_restart_s']['mean']} s / "
                                     f"{res['hub_restart_s']['max']} s"),
        ("seed", res["seed"]),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print()
    print(f"crash campaign: {'PASS' if res['ok'] else 'FAIL'}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    if res["lost"]:
        print(f"  lost: {', '.join(res['lost_sample'][:20])}")
    if res["duplicates"]:
        print(f"  duplicated: {', '.join(d['msg'] for d in res['duplicates_sample'][:20])}")
    print(f"  files: {res['workdir']}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_sender", "_receiver"):
        role = argv.pop(0)
        p = argparse.ArgumentParser(prog=f"crash_campaign.py {role}")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--id", required=True)
        p.add_argument("--key", required=True)
        if role == "_sender":
            p.add_argument("--acks", required=True)
            p.add_argument("--receivers", required=True)
            p.add_argument("--rate", type=float, default=50.0)
            p.add_argument("--batch", type=int, default=20)
            p.add_argument("--flush-timeout", type=float, default=30.0)
            p.add_argument("--final-timeout", type=float, default=120.0)
            p.add_argument("--seed", type=int, default=0)
            return run_sender(p.parse_args(argv))
        p.add_argument("--out", required=True)
        p.add_argument("--errors", required=True)
        p.add_argument("--cycle-min", type=float, default=0.0)
        p.add_argument("--cycle-max", type=float, default=0.0)
        p.add_argument("--agents", type=int, default=1)
        p.add_argument("--down-max", type=float, default=0.0)
        p.add_argument("--seed", type=int, default=0)
        return run_receiver(p.parse_args(argv))

    p = argparse.ArgumentParser(
        description="SIGKILL a hub under traffic many times; count lost and duplicated messages."
    )
    p.add_argument("--kills", type=int, default=100, help="hub kills (default 100)")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed)")
    p.add_argument("--senders", type=int, default=3)
    p.add_argument("--receivers", type=int, default=2)
    p.add_argument(
        "--agents-per-receiver",
        type=int,
        default=1,
        help="agents in each receiver process (default 1; more share its receive workers)",
    )
    p.add_argument("--rate", type=float, default=50.0, help="messages/s per sender (about)")
    p.add_argument("--batch", type=int, default=20, help="largest batch between two flushes")
    p.add_argument("--min-interval", type=float, default=0.2, help="least hub uptime, s")
    p.add_argument("--max-interval", type=float, default=1.5, help="most hub uptime, s")
    p.add_argument("--max-down", type=float, default=0.3, help="most downtime per kill, s")
    p.add_argument(
        "--receiver-cycle",
        type=float,
        nargs=2,
        default=(2.0, 8.0),
        metavar=("MIN", "MAX"),
        help="each receiver goes offline every MIN-MAX s (default 2 8; 0 0: never)",
    )
    p.add_argument("--receiver-down", type=float, default=1.0, help="most offline time, s")
    p.add_argument("--flush-timeout", type=float, default=30.0)
    p.add_argument("--quiet", type=float, default=5.0, help="drain ends after this long idle")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--synchronous", choices=["full", "normal"], default="full")
    p.add_argument("--hub-log-level", default="info")
    p.add_argument("--port", type=int, default=0, help="hub port (default: a free one)")
    p.add_argument("--workdir", help="keep every file here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", dest="json_path", help="write the result as JSON to this file")
    ns = p.parse_args(argv)
    if ns.min_interval > ns.max_interval or ns.kills < 0 or ns.senders < 1 or ns.receivers < 1:
        p.error("need min-interval <= max-interval, kills >= 0, senders >= 1, receivers >= 1")

    campaign = Campaign(ns)

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (nohup, &)
    code = 2
    result: dict[str, Any] | None = None
    try:
        result = campaign.run()
        code = 0 if result["ok"] else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr, flush=True)
        code = 130
    except CampaignError as exc:
        print(f"campaign error: {exc}", file=sys.stderr, flush=True)
    finally:
        campaign.stop_everything()
    if result is not None:
        print_summary(result)
        if ns.json_path:
            Path(ns.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if code == 0 and not ns.keep and not ns.workdir:
        shutil.rmtree(campaign.dir, ignore_errors=True)
    elif result is None or code != 0:
        print(f"files kept in {campaign.dir}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
