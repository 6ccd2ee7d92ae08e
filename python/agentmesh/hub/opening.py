"""One run of the hub, brought up and torn down in order: :class:`HubRun`.

Up: the store opened, the :class:`~agentmesh.hub.core.HubCore` made on it, the socket
listening (TCP, or TLS with the certificate's hash bound into registrations; every accepted
socket becomes a :class:`~agentmesh.hub.connection.Connection`), the metrics endpoint, the
housekeeping clock. Down: metrics stopped, no new connections, everything accepted committed
and acknowledged, the connections and the store closed. What the server object around it does
(threads, the event loop, signals, ``stop()``) is :mod:`agentmesh.hub.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from agentmesh._eventloop import loop_name
from agentmesh.hub.connection import Connection
from agentmesh.hub.core import HubCore
from agentmesh.hub.limits import HubLimits
from agentmesh.hub.metrics import MetricsEndpoint
from agentmesh.hub_store import HubBackend

__all__ = ["HubRun"]

log = logging.getLogger("agentmesh.hub")


class HubRun:
    """What one run of a hub holds, from :meth:`open` to :meth:`close`."""

    def __init__(
        self,
        hub: HubCore,
        listener: asyncio.AbstractServer,
        port: int,
        metrics: MetricsEndpoint | None,
    ) -> None:
        self.hub = hub
        self.listener = listener
        self.port = port  # the port listened on (the one picked, for port 0)
        self.metrics = metrics

    @classmethod
    async def open(
        cls,
        backend: HubBackend,
        limits: HubLimits,
        host: str,
        port: int,
        *,
        tls_cert: Path | None,
        tls_key: Path | None,
        metrics_at: tuple[str, int] | None,
        on_fatal: Callable[[BaseException], None],
    ) -> HubRun:
        loop = asyncio.get_running_loop()
        crypto = _load_crypto()
        ssl_ctx = _server_ssl_context(tls_cert, tls_key)
        state = await backend.open()
        cert_sha256 = _certificate_sha256(tls_cert)
        hub = HubCore(loop, backend, state, limits, crypto, on_fatal, cert_sha256)
        try:
            listener = await loop.create_server(
                lambda: Connection(hub),
                host,
                port,
                ssl=ssl_ctx,
                ssl_handshake_timeout=limits.handshake_timeout if ssl_ctx else None,
                backlog=min(4096, max(128, limits.max_connections)),
                reuse_address=True,
            )
        except BaseException:
            await backend.close()
            raise
        sockets = listener.sockets or ()
        if sockets:
            port = int(sockets[0].getsockname()[1])
        metrics = None
        if metrics_at is not None:
            try:
                metrics = MetricsEndpoint(hub, *metrics_at)
            except BaseException:
                listener.close()
                await backend.close()
                raise
        hub.start_housekeeping()
        log.info(
            "hub listening on %s:%d (%s%s, %s loop)",
            host,
            port,
            backend.description,
            ", tls" if ssl_ctx else "",
            loop_name(loop),
        )
        return cls(hub, listener, port, metrics)

    async def close(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        self.listener.close()
        await self.hub.shutdown()
        await self.hub.store.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.listener.wait_closed(), 2.0)
        log.info("hub stopped")


def _load_crypto() -> ModuleType:
    from agentmesh import crypto

    return crypto


def _server_ssl_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None or key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _certificate_sha256(cert: Path | None) -> bytes | None:
    """SHA-256 of the first (leaf) certificate of ``cert``, in DER: what a client's
    ``getpeercert(binary_form=True)`` returns for this hub."""
    if cert is None:
        return None
    text = cert.read_text("ascii", "replace")
    start = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, start)
    if start < 0 or end < 0:
        raise ssl.SSLError(f"no PEM certificate in {cert}")
    der = ssl.PEM_cert_to_DER_cert(text[start : end + len(end_marker)] + "\n")
    return hashlib.sha256(der).digest()
