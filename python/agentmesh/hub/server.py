"""The server object: :class:`NetworkHubServer` holds the hub's settings, runs its event loop
(in the calling thread or a background one) and stops it in order.

Starting opens one :class:`~agentmesh.hub.opening.HubRun` (the store, SQLite by default or any
:class:`agentmesh.hub_store.HubBackend`; the core; the listening socket; metrics). Stopping
(``stop()``, SIGTERM/SIGINT, or a fatal store error) closes that run: new connections refused,
everything accepted committed and acknowledged, the connections and the store closed. The
common hub interface of the server object (``register``, ``deliver``, ``get_bundle``, ...)
lives in :mod:`agentmesh.hub.in_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmesh._eventloop import new_event_loop
from agentmesh.hub.core import HubCore
from agentmesh.hub.in_process import InProcessHub
from agentmesh.hub.limits import HubLimits
from agentmesh.hub.metrics import MetricsEndpoint
from agentmesh.hub.opening import HubRun
from agentmesh.hub_protocol import DEFAULT_PORT
from agentmesh.hub_store import HubBackend, default_store_path, ephemeral_store_path
from agentmesh.hub_store_sqlite import SQLiteBackend

__all__ = ["NetworkHubServer"]

log = logging.getLogger("agentmesh.hub")


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
        log.debug("connection error: %s", exc)
        return
    loop.default_exception_handler(context)


class NetworkHubServer:
    """The network hub.

    ``NetworkHubServer(host="127.0.0.1", port=7700, store_path=None, *, tls_cert=None,
    tls_key=None, limits=None, synchronous="FULL", backend=None, **limit_overrides)``

    - ``port=0`` picks a free port; read it from :attr:`port` after :meth:`start`.
    - ``store_path=None``: with a fixed port, a persistent file at
      :func:`agentmesh.hub_store.default_store_path` (``hub-<host>-<port>.sqlite3`` in the
      user data directory); with ``port=0``, a private temporary store removed on clean stop.
    - ``tls_cert``/``tls_key``: PEM files; when given the hub speaks only TLS.
    - ``limits``: a :class:`HubLimits`; keyword overrides of its fields are accepted directly
      (``NetworkHubServer(port=0, idle_timeout=2.0, ping_interval=0.5)``).
    - ``synchronous``: ``"FULL"`` (default: every commit is fsync'ed) or ``"NORMAL"`` (survives a
      killed hub, not a power cut).
    - ``backend``: another :class:`agentmesh.hub_store.HubBackend` instead of SQLite.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        store_path: str | os.PathLike[str] | None = None,
        *,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        limits: HubLimits | None = None,
        synchronous: str = "FULL",
        backend: HubBackend | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        **limit_overrides: Any,
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        base = limits if limits is not None else HubLimits()
        names = {f.name for f in dataclasses.fields(HubLimits)}
        unknown = set(limit_overrides) - names
        if unknown:
            raise TypeError(f"unknown hub setting(s): {', '.join(sorted(unknown))}")
        self.limits = dataclasses.replace(base, **limit_overrides).validate()
        self.host = host
        self.port = port
        self.requested_port = port
        self.tls_cert = Path(tls_cert) if tls_cert is not None else None
        self.tls_key = Path(tls_key) if tls_key is not None else None
        #: serve Prometheus metrics on this port (0: a free one; None: no metrics)
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics: MetricsEndpoint | None = None
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
        self._backend = backend
        self.store_path: Path | None = Path(store_path) if store_path is not None else None
        self._ephemeral = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._hub: HubCore | None = None
        self._run: HubRun | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self.fatal_error: BaseException | None = None
        self._running = False
        self._in_process = InProcessHub(self)

    # ---- properties ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def running(self) -> bool:
        return self._running

    def __repr__(self) -> str:
        return f"NetworkHubServer({self.host!r}, {self.port})"

    # ---- starting and stopping -------------------------------------------------------------

    def start(self, block: bool = True) -> None:
        """Serve. ``block=True`` runs in this thread until :meth:`stop` (or SIGTERM/SIGINT when
        this is the main thread); ``block=False`` runs in a background thread and returns once
        the hub listens (raising what prevented it from starting). Starting a server that runs
        in the background already (``with NetworkHubServer(...) as hub:`` starts it) does
        nothing; blocking on one does not make sense and raises."""
        if self._running or self._thread is not None:
            if not block and self._thread is not None:
                return
            raise RuntimeError(
                "this hub server is already running in the background (a 'with' block starts "
                "it); to block until it stops, start it with block=True and no 'with'"
            )
        if block:
            self._run_blocking()
            return
        self._started.clear()
        self._stopped.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._thread_main, name="agentmesh-hub", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def _run_blocking(self, on_listening: Callable[[NetworkHubServer], None] | None = None) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "start(block=True) cannot run inside a running event loop; "
                "use 'await server.serve()' or start(block=False)"
            )
        loop = new_event_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve(on_listening=on_listening, signals=True))
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
        if self.fatal_error is not None:
            raise self.fatal_error

    def _thread_main(self) -> None:
        loop = new_event_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve())
        except BaseException as exc:
            if not self._started.is_set():
                self._start_error = exc
            else:
                log.error("hub stopped with an error: %s", exc)
        finally:
            self._started.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    async def serve(
        self,
        *,
        on_listening: Callable[[NetworkHubServer], None] | None = None,
        signals: bool = False,
    ) -> None:
        """Run the hub in the current event loop until :meth:`stop` (or a fatal store error,
        which is raised)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        await self._startup()
        installed: list[int] = []
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._signal_stop, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    pass
        self._running = True
        self._started.set()
        try:
            if on_listening is not None:
                on_listening(self)
            await self._stop_event.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._shutdown()
            self._running = False
        if self.fatal_error is not None:
            raise self.fatal_error

    def _signal_stop(self, sig: int) -> None:
        log.info("received %s, stopping", signal.Signals(sig).name)
        if self._stop_event is not None:
            self._stop_event.set()

    def _fatal(self, exc: BaseException) -> None:
        log.critical("fatal hub error: %s", exc)
        if self.fatal_error is None:
            self.fatal_error = exc
        if self._stop_event is not None:
            self._stop_event.set()

    async def _startup(self) -> None:
        self._run = await HubRun.open(
            self._open_backend(),
            self.limits,
            self.host,
            self.requested_port,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            metrics_at=(
                (self.metrics_host, self.metrics_port) if self.metrics_port is not None else None
            ),
            on_fatal=self._fatal,
        )
        self.port = self._run.port
        self._hub = self._run.hub
        self.metrics = self._run.metrics

    def _open_backend(self) -> HubBackend:
        """The store given, or SQLite at the path given, the default one of a fixed port, or a
        private temporary one for port 0."""
        if self._backend is not None:
            return self._backend
        path = self.store_path
        if path is None:
            if self.requested_port == 0:
                path = ephemeral_store_path()
                self._ephemeral = True
            else:
                path = default_store_path(self.host, self.requested_port)
        self.store_path = path
        return SQLiteBackend(path, synchronous=self.synchronous, ephemeral=self._ephemeral)

    async def _shutdown(self) -> None:
        run, self._run = self._run, None
        self.metrics = None
        if run is not None:
            await run.close()
        self._hub = None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving: commit and acknowledge what was accepted, close every connection and
        the store. Safe to call from any thread, and more than once."""
        self._in_process.close()
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> NetworkHubServer:
        if not self._running:
            self.start(block=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the common hub interface (agentmesh.hub.in_process) --------------------------------

    def client_hub(self) -> Any:
        """An :class:`agentmesh.hubs.NetworkHub` connected to this server (made on first use),
        through which :meth:`register` and :meth:`deliver` work, so ``Agent(..., hub=server)``
        behaves as with ``NetworkHub(host, server.port)``. For a TLS hub it trusts the server's
        own certificate file (right for a self-signed one)."""
        return self._in_process.client_hub()

    def register(self, agent: Any) -> None:
        self._in_process.register(agent)

    def unregister(self, agent: Any) -> None:
        self._in_process.unregister(agent)

    def deliver(self, envelope: Any) -> None:
        self._in_process.deliver(envelope)

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return self._in_process.get_bundle(agent_id)

    def list_agents(self) -> list[str]:
        return self._in_process.list_agents()

    def message_count(self) -> int:
        return self._in_process.message_count()

    def connection_stats(self) -> dict[str, Any]:
        """Open connections: ``total``, ``handshaking``, ``lookup``, ``agents`` and
        ``unauthenticated_addresses`` (addresses holding handshaking or lookup connections)."""
        return self._in_process.connection_stats()

