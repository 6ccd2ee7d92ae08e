"""``agentmesh nats-auth``: run the agentmesh authorization service of a NATS cluster.

``--keys DIR`` holds its two nkeys (``--new-keys`` makes them and prints the ``authorization``
block every server's config needs). Runs until Ctrl-C or SIGTERM; run two or more for
availability. See docs/nats.md, "Deployment with the authorization service".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

__all__ = ["add_nats_auth_parser", "cmd_nats_auth"]

READY = "agentmesh nats-auth: ready"


def add_nats_auth_parser(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    p = add_command(
        "nats-auth",
        help="run the authorization service of a NATS cluster for NatsHub(auth=True)",
        description="Let each agent into the NATS cluster only with a proof of its identity "
        "key, as a short-lived user with its own permissions (NATS auth callout).",
    )
    p.add_argument(
        "--servers", required=True, help="the cluster's URLs, comma-separated (nats:// or tls://)"
    )
    p.add_argument("--keys", required=True, metavar="DIR", help="the service's nkeys directory")
    p.add_argument(
        "--new-keys",
        action="store_true",
        help="make the keys in --keys first (refuses to replace any) and print the servers' "
        "authorization block",
    )
    p.add_argument("--prefix", default="agentmesh", help="the deployment's prefix")
    p.add_argument(
        "--lifetime", type=float, default=600.0, help="seconds an issued user lasts (default 600)"
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the cluster at start (default 30)",
    )
    p.add_argument(
        "--replicas", type=int, default=None, help="of the stream and buckets it creates"
    )
    p.add_argument(
        "--new-ids-per-source",
        type=int,
        default=60,
        help="new agent ids one source address may bind a minute (default 60)",
    )
    p.add_argument(
        "--new-ids-per-minute",
        type=int,
        default=600,
        help="new agent ids all sources together may bind a minute (default 600)",
    )


def cmd_nats_auth(args: argparse.Namespace) -> int:
    from .nats_auth_budgets import RegistrationBudget
    from .nats_auth_config import AuthKeys, authorization_block
    from .nats_auth_service import NatsAuthService
    from .nats_layout import NatsLayout
    from .nats_setup import NatsSettings

    if args.new_keys:
        keys = AuthKeys.create(args.keys)
        print(f"agentmesh nats-auth: new keys in {args.keys}; every server's config needs:")
        print(authorization_block(keys), flush=True)
    else:
        keys = AuthKeys.load(args.keys)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    settings = NatsSettings(layout=NatsLayout(args.prefix), replicas=args.replicas)
    if not getattr(args, "quiet", False):  # its decisions are what its log is for
        logging.getLogger("agentmesh.nats.auth").setLevel(logging.INFO)

    async def serve() -> None:
        service = NatsAuthService(
            servers,
            keys,
            settings=settings,
            lifetime=args.lifetime,
            registrations=RegistrationBudget(args.new_ids_per_source, args.new_ids_per_minute),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.start(args.connect_timeout)
        print(READY, flush=True)
        try:
            await stop.wait()
        finally:
            await service.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    print("agentmesh nats-auth: stopped", flush=True)
    return 0
