"""One nats-py connection of agentmesh: reconnecting forever (a failover takes seconds), and
refused clearly when the cluster's authorization service does not let it in."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .errors import HubError, NatsAuthError

__all__ = ["connect"]

log = logging.getLogger("agentmesh.nats")

#: Attempts the servers turned away (refused: ``Authorization Violation``, which is also what a
#: server says when its callout got no answer within the authorization timeout; or, on a
#: cluster guarded by the authorization service, dropped without a reason or left unanswered)
#: after which a first connection gives up. One is no verdict: a service that just died still
#: gets callouts until the cluster notices, and a service deciding many first connections at
#: once on a loaded machine may answer one too late (one of forty agents connecting at once on
#: a busy two-core machine was). With no service running each costs the servers' authorization
#: timeout (5 s), so the error comes in about 10 s, inside an agent's registration time
#: (``connect_timeout`` + 5 s).
_TURNED_AWAY = 2
#: Seconds between attempts (nats-py's own reconnect wait).
_RETRY_WAIT = 0.25


async def connect(
    servers: list[str],
    *,
    connect_timeout: float,
    name: str,
    on_disconnect: Callable[[], None] | None = None,
    on_reconnect: Callable[[], None] | None = None,
    options: Mapping[str, Any] | None = None,
    give_up_after: float | None = None,
    guarded: bool = False,
) -> Any:
    """A nats-py connection that reconnects forever. ``options``: more of nats-py's
    (credentials). ``guarded``: the cluster runs the authorization service. A first connection
    the servers keep turning away is a :class:`NatsAuthError` (nats-py alone would keep trying);
    ``give_up_after``: seconds after which a first connection that found no server is a
    :class:`HubError`."""
    try:
        import nats  # noqa: F401  (checked here, used by each attempt)
    except ImportError as exc:
        raise HubError("NatsHub needs nats-py: pip install 'agentmesh[nats]'") from exc

    loop = asyncio.get_running_loop()
    give_up_at = None if give_up_after is None else loop.time() + give_up_after
    turned_away = _TurnedAway(name, guarded)
    while True:
        attempt = _Attempt(
            servers,
            name=name,
            connect_timeout=connect_timeout,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
            options=options,
            turned_away=turned_away,
        )
        left = None if give_up_at is None else max(0.0, give_up_at - loop.time())
        nc = await attempt.run(left)
        if nc is not None:
            turned_away.seen.clear()  # (their tracebacks would live as long as the connection)
            return nc
        out_of_time = give_up_at is not None and loop.time() + _RETRY_WAIT >= give_up_at
        if not attempt.unconnected or turned_away.enough.is_set() or out_of_time:
            break
        await asyncio.sleep(_RETRY_WAIT)
    failure = attempt.failure
    if failure is None and turned_away.seen:
        failure = turned_away.seen[-1]
    elif failure is None:
        failure = ConnectionError(f"no server answered in {give_up_after}s")
    if turned_away.seen:
        raise NatsAuthError(
            f"the NATS servers {', '.join(servers)} refused the connection of {name} "
            f"({failure or type(failure).__name__}): the agentmesh authorization service "
            "(agentmesh nats-auth) is down or unreachable, or refused the proof (its log says "
            "which)"
        ) from failure
    raise HubError(
        f"cannot connect to the NATS servers {', '.join(servers)}: {failure}"
    ) from failure


class _TurnedAway:
    """The attempts the servers turned away, over all of a first connection's attempts."""

    def __init__(self, name: str, guarded: bool) -> None:
        self.name = name
        self.guarded = guarded
        self.seen: list[BaseException] = []  # why, in order
        self.enough = asyncio.Event()  # set: give up

    def note(self, exc: BaseException, after_connect: bool) -> None:
        """A handshake of nats-py's that failed before the connection was in; ``after_connect``:
        its CONNECT had gone out (what failed before is the network's, or a server's)."""
        if _refused(exc) or (self.guarded and after_connect and _unanswered(exc)):
            self.count(exc)
        # (else a network fault: nats-py tries again, within the caller's time)

    def count(self, exc: BaseException) -> None:
        self.seen.append(exc)
        log.info(
            "NATS connection %s: turned away (%d of %d): %s",
            self.name,
            len(self.seen),
            _TURNED_AWAY,
            exc or type(exc).__name__,
        )
        if len(self.seen) >= _TURNED_AWAY:
            self.enough.set()


class _Attempt:
    """One nats-py client trying to connect (nats-py may make several handshakes): it ends
    connected, given up (turned away often enough, out of time), or with a client that
    connect() returned unconnected, which does not work (nats-py stopped its flusher): the
    next attempt takes a new one."""

    def __init__(
        self,
        servers: list[str],
        *,
        name: str,
        connect_timeout: float,
        on_disconnect: Callable[[], None] | None,
        on_reconnect: Callable[[], None] | None,
        options: Mapping[str, Any] | None,
        turned_away: _TurnedAway,
    ) -> None:
        self.servers, self.name, self.connect_timeout = servers, name, connect_timeout
        self.on_disconnect, self.on_reconnect = on_disconnect, on_reconnect
        self.options, self.turned_away = options, turned_away
        self.failure: BaseException | None = None  # what nats-py's connect() raised
        self.unconnected = False
        self.connected = False

    async def run(self, timeout: float | None) -> Any:
        """The connected client, or None (``failure`` and ``unconnected`` say why)."""
        nc: Any = _client_class(self.turned_away.guarded)()
        nc.handshake_failed = self._handshake_failed
        connecting = asyncio.ensure_future(
            nc.connect(
                servers=self.servers,
                name=self.name,
                connect_timeout=self.connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=_RETRY_WAIT,
                ping_interval=5,
                max_outstanding_pings=3,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
                error_cb=self._error,
                **dict(self.options or {}),
            )
        )
        giving_up = asyncio.ensure_future(self.turned_away.enough.wait())
        try:
            await asyncio.wait(
                {connecting, giving_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # cancelled from outside: nothing keeps trying behind the caller
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({connecting})
                await nc.close()
            raise
        finally:
            giving_up.cancel()
        if connecting.done() and connecting.exception() is None and nc.is_connected:
            self.connected = True  # (its later handshakes are no verdict on a first connection)
            return nc
        if connecting.done():
            self.failure = connecting.exception()
            if self.failure is None and self.turned_away.guarded:
                self.unconnected = True
                self.turned_away.count(ConnectionError("the server left it unconnected"))
            elif self.failure is None:  # (no callout to blame: nats-py would never recover it)
                self.failure = ConnectionError("the server left the connection unconnected")
        try:
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting})  # (an outside cancel still reaches the caller)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        return None

    def _handshake_failed(self, exc: BaseException, after_connect: bool) -> None:
        if not self.connected:
            self.turned_away.note(exc, after_connect)

    async def _disconnected(self) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect()

    async def _reconnected(self) -> None:
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS connection %s: %s", self.name, exc)


#: What nats-server says when it drops a connection's user: refused on a re-authentication, or
#: its user expired (the authorization service's users do).
_USER_DROPPED = ("authorization violation", "user authentication expired", "authentication timeout")


@functools.cache
def _client_class(guarded: bool) -> type:
    """nats-py's client, with two mends. Its handshake answers the server's PINGs and reports
    how it failed. Guarded, it reconnects (with a new proof) when the server drops its user:
    nats-py closes a connection for good on those errors, which would end an agent whose user
    expired while no authorization service could renew it."""
    from nats.aio.client import Client
    from nats.errors import AuthorizationError

    class AgentMeshClient(Client):  # type: ignore[misc]
        handshake_failed: Callable[[BaseException, bool], None] | None = None
        connect_sent = False

        def _connect_command(self) -> bytes:
            self.connect_sent = True
            return bytes(super()._connect_command())

        async def _process_connect_init(self) -> None:
            # nats-py takes the first line after its CONNECT and PING for the answer. A server
            # whose callout takes over 2 s sends its own PING first, and nats-py then returns
            # from connect() neither connected nor working (its flusher stopped), a known gap
            # of nats-py ("Handle PING/PONG arriving first"). Answer such PINGs and read on.
            self.connect_sent = False
            transport: Any = self._transport
            if transport is not None:
                transport.readline = _answering_pings(transport, transport.readline)
            try:
                await super()._process_connect_init()
            except Exception as exc:
                if self.handshake_failed is not None:
                    self.handshake_failed(exc, self.connect_sent)
                raise
            finally:
                if transport is not None:
                    del transport.readline

    if not guarded:
        return AgentMeshClient

    class GuardedClient(AgentMeshClient):
        async def _process_err(self, err_msg: str) -> None:
            if self.is_connected and any(m in err_msg.lower() for m in _USER_DROPPED):
                log.info("NATS dropped the connection's user (%s): reconnecting", err_msg.strip())
                await self._process_op_err(AuthorizationError())
                return
            await super()._process_err(err_msg)

    return GuardedClient


def _answering_pings(transport: Any, read_line: Callable[[], Any]) -> Callable[[], Any]:
    async def answering_pings() -> bytes:
        while True:
            line = await read_line()
            if line.rstrip(b"\r\n") != b"PING":
                return bytes(line)
            transport.write(b"PONG\r\n")
            await transport.drain()  # (a WebSocket transport sends only on drain)

    return answering_pings


def _unanswered(exc: BaseException) -> bool:
    """Whether ``exc`` is a handshake the server dropped without a reason or left unanswered
    (on a guarded cluster, after the CONNECT: a callout unanswered in time)."""
    return isinstance(exc, (ConnectionResetError, BrokenPipeError, asyncio.TimeoutError))


def _refused(exc: BaseException) -> bool:
    from nats.errors import AuthorizationError

    return isinstance(exc, AuthorizationError) or "authorization" in str(exc).lower()
