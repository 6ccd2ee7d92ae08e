"""The config file of one nats-server of an agentmesh deployment, as text.

One function writes what docs/nats.md shows for a real deployment (TLS for clients and routes,
the authorization service's block) and what :class:`agentmesh.nats_cluster.NatsCluster` runs
on 127.0.0.1, so the documented config is the tested one (``tests/python/test_nats_tls.py``
checks the docs' blocks against it and runs it with certificates of its own making).

The settings that keep acknowledged data are always written: ``sync_interval: always`` (each
JetStream write is fsynced before it is acknowledged; the default, every 2 minutes, lost
acknowledged writes when nodes died together in Jepsen's analysis of NATS 2.12) and a
``max_payload`` that fits the largest envelope.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from .nats_layout import MAX_PAYLOAD

__all__ = ["CLUSTER_NAME", "ServerTls", "TlsFiles", "server_config"]

CLUSTER_NAME = "agentmesh"


def _quoted(path: str) -> str:
    return json.dumps(path)


def _size(size: int) -> str:
    return f"{size // (1024 * 1024)}MB" if size % (1024 * 1024) == 0 else str(size)


@dataclass(frozen=True)
class TlsFiles:
    """A certificate and its key; with ``ca_file`` the other side must present a certificate
    signed by that CA (``verify: true``: routes between servers)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None

    def block(self) -> str:
        parts = [f"cert_file: {_quoted(self.cert_file)}", f"key_file: {_quoted(self.key_file)}"]
        if self.ca_file is not None:
            parts += [f"ca_file: {_quoted(self.ca_file)}", "verify: true"]
        return "tls { " + ", ".join(parts) + " }"


@dataclass(frozen=True)
class ServerTls:
    """TLS for the clients' port and (on a cluster) for the routes between servers: both carry
    the subjects, which name who sends to whom."""

    clients: TlsFiles
    routes: TlsFiles | None = None


def server_config(
    *,
    name: str,
    listen: str,
    store_dir: str,
    cluster_listen: str | None = None,
    routes: Sequence[str] = (),
    tls: ServerTls | None = None,
    authorization: str = "",
    extra: Sequence[str] = (),
) -> str:
    """The config of server ``name``: clients on ``listen`` (host:port), its JetStream store in
    ``store_dir``; on a cluster its routes listen on ``cluster_listen`` and go to ``routes``
    (``nats-route://host:port``); ``authorization``: the service's block
    (:func:`agentmesh.nats_auth_config.authorization_block`); ``extra``: more top-level lines
    (the launcher's monitoring port)."""
    lines = [
        f"server_name: {name}",
        f"listen: {listen}",
        *extra,
        f"max_payload: {_size(MAX_PAYLOAD)}",
        "jetstream {",
        f"  store_dir: {_quoted(store_dir)}",
        "  sync_interval: always",
        "}",
    ]
    if cluster_listen is not None:
        lines += [
            "cluster {",
            f"  name: {CLUSTER_NAME}",
            f"  listen: {cluster_listen}",
            f"  routes: [{', '.join(_quoted(route) for route in routes)}]",
        ]
        if tls is not None and tls.routes is not None:
            lines.append(f"  {tls.routes.block()}")
        lines.append("}")
    if tls is not None:
        lines.append(tls.clients.block())
    if authorization:
        lines.append(authorization)
    return "\n".join(lines) + "\n"
