"""The command line: ``agentmesh-hub`` (also ``python -m agentmesh.hub_server`` and
``agentmesh hub``). Flags, the listening line and the exit codes: ``docs/hub.md#running-a-hub``.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any

from agentmesh.hub.limits import HubLimits
from agentmesh.hub.server import NetworkHubServer
from agentmesh.hub_protocol import DEFAULT_PORT
from agentmesh.hub_store import StoreError

__all__ = ["main"]

log = logging.getLogger("agentmesh.hub")


def _positive(kind: type, *, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number above 0 (or 0 too, with ``zero``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero else 'positive'}: {text!r}"
            )
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    d = HubLimits()
    p = argparse.ArgumentParser(
        prog="agentmesh-hub",
        description="Run an agentmesh network hub (directory + durable store-and-forward).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (7700)"
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite store file (default: hub-HOST-PORT.sqlite3 in the user data directory; "
        "a temporary store removed on stop with --port 0)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain); enables TLS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="what goes to stderr (default info)",
    )
    p.add_argument(
        "--synchronous",
        default="full",
        type=str.lower,
        choices=["full", "normal"],
        help="full: fsync every group commit (default); normal: survives a killed hub, "
        "not a power cut",
    )
    p.add_argument(
        "--max-connections",
        type=_positive(int),
        default=d.max_connections,
        help=f"open connections at once, agents and lookups (default {d.max_connections:,})",
    )
    p.add_argument(
        "--max-frame-size",
        type=_positive(int),
        default=d.max_frame_size,
        help=f"largest frame in bytes, so the largest envelope plus a header (default "
        f"{d.max_frame_size:,}: agents send at most 4 MiB sealed; below that, bigger sends are "
        "refused at the agent's flush)",
    )
    p.add_argument(
        "--max-queued",
        type=_positive(int),
        default=d.max_queued_per_agent,
        help=f"envelopes queued per recipient before sends to it are refused as 'inbox full' "
        f"(default {d.max_queued_per_agent:,})",
    )
    p.add_argument(
        "--max-fanout-bytes",
        type=_positive(int, zero=True),
        default=d.max_fanout_bytes,
        help=f"bytes of copies one group upload may store in all (members x message size); "
        f"clients split a larger fan-out; 0 turns fan-out off, and clients then send each "
        f"member's copy on its own (default {d.max_fanout_bytes:,})",
    )
    p.add_argument(
        "--max-channels",
        type=_positive(int, zero=True),
        default=d.max_channels_per_connection,
        help=f"agents one connection may carry as channels (agents of one process share a "
        f"connection); 0: the hub offers no channels, and each agent connects on its own "
        f"(default {d.max_channels_per_connection:,})",
    )
    p.add_argument(
        "--handshake-timeout",
        type=_positive(float),
        default=d.handshake_timeout,
        help=f"seconds a new connection has to register or ask for lookups "
        f"(default {d.handshake_timeout:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=_positive(float),
        default=d.idle_timeout,
        help=f"seconds of silence before a connection is closed (default {d.idle_timeout:g})",
    )
    p.add_argument(
        "--ping-interval",
        type=_positive(float),
        default=d.ping_interval,
        help=f"seconds between the hub's pings on a quiet connection (default {d.ping_interval:g})",
    )
    p.add_argument(
        "--release-id",
        action="append",
        metavar="ID",
        help="do not serve: forget this agent id in the (stopped) hub's --store, with its key, "
        "bundle, prekeys and queued envelopes, so that it can register with a new identity "
        "key (its peers then see the identity-changed error); repeatable",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://METRICS-HOST:PORT/metrics (off by default; "
        "0 picks a free port; needs pip install 'agentmesh[metrics]')",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address the metrics listen on (default 127.0.0.1)",
    )
    p.add_argument(
        "--delivery-window",
        type=_positive(int),
        default=d.delivery_window,
        help=f"envelopes delivered to an agent and not yet acknowledged, at most "
        f"(default {d.delivery_window:,})",
    )
    p.add_argument(
        "--expired-sweep-interval",
        type=_positive(float, zero=True),
        default=d.expired_sweep_interval,
        metavar="SECONDS",
        help=f"seconds between purges of offline agents' messages whose sender-set expiry has "
        f"passed; 0: none (a send to a full inbox still purges it) "
        f"(default {d.expired_sweep_interval:g})",
    )
    return p


def _release(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from agentmesh.hub_store_sqlite.release import release_ids

    if args.store is None:
        parser.print_usage(sys.stderr)
        print("agentmesh-hub: error: --release-id needs the hub's --store", file=sys.stderr)
        return 2
    try:
        dropped = release_ids(args.store, args.release_id)
    except StoreError as exc:
        print(f"agentmesh-hub: error: {exc}", file=sys.stderr)
        return 1
    for agent_id, count in dropped.items():
        print(
            f"released {agent_id!r}: it may register with a new identity key; {count} queued "
            "envelope(s) for the old key dropped"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``agentmesh-hub``: 0 after a clean stop (SIGTERM/SIGINT), 2 on a usage error, 1 when
    the hub cannot start or fails (port in use, store locked or corrupt, bad TLS files)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.print_usage(sys.stderr)
        print("agentmesh-hub: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.release_id:
        return _release(parser, args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = NetworkHubServer(
            args.host,
            args.port,
            args.store,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            synchronous=args.synchronous,
            max_connections=args.max_connections,
            max_frame_size=args.max_frame_size,
            max_queued_per_agent=args.max_queued,
            max_fanout_bytes=args.max_fanout_bytes,
            max_channels_per_connection=args.max_channels,
            handshake_timeout=args.handshake_timeout,
            idle_timeout=args.idle_timeout,
            ping_interval=args.ping_interval,
            delivery_window=args.delivery_window,
            expired_sweep_interval=args.expired_sweep_interval,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
    except (ValueError, TypeError) as exc:
        parser.print_usage(sys.stderr)
        print(f"agentmesh-hub: error: {exc}", file=sys.stderr)
        return 2

    def listening(srv: NetworkHubServer) -> None:
        host = f"[{srv.host}]" if ":" in srv.host else srv.host
        extra = ", tls" if srv.tls else ""
        print(
            f"agentmesh-hub listening on {host}:{srv.port} (store {srv.store_path}{extra})",
            file=sys.stderr,
            flush=True,
        )
        if srv.metrics is not None:
            print(
                f"agentmesh-hub metrics on http://{srv.metrics.host}:{srv.metrics.port}/metrics",
                file=sys.stderr,
                flush=True,
            )

    try:
        server._run_blocking(on_listening=listening)
    except (OSError, StoreError, ssl.SSLError, ImportError) as exc:
        log.critical("agentmesh-hub: %s", exc)
        return 1
    except Exception:
        log.critical("agentmesh-hub failed", exc_info=True)
        return 1
    return 0
