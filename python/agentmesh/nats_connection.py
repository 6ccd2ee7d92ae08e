"""One nats-py connection of agentmesh: reconnecting forever (a failover takes seconds), and
refused clearly when the cluster's authorization service does not let it in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .errors import HubError, NatsAuthError

__all__ = ["connect"]

log = logging.getLogger("agentmesh.nats")

#: Refusals by the servers (on different attempts) after which a first connection gives up:
#: one more than one, so that a service answering late once does not fail an agent's start.
_REFUSALS = 2
#: Connections dropped without a reason (a server whose callout went unanswered within its
#: timeout) after which a first connection gives up, counted apart from refusals. Each costs
#: the servers' authorization timeout (5 s), so a service that is down is reported in about
#: 10 s, inside an agent's registration time (``connect_timeout`` + 5 s). One drop alone is
#: no verdict: a service that just died still gets callouts until the cluster notices, and a
#: service deciding many first connections at once on a loaded machine may answer one too late
#: (one of forty agents connecting at once on a busy two-core machine was dropped once).
_DROPS = 2
#: Seconds between a dropped attempt and the next one (nats-py's own reconnect wait).
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
    the servers keep refusing (``Authorization Violation``) or dropping is a
    :class:`NatsAuthError` (nats-py alone would keep trying, or give up at the first drop);
    ``give_up_after``: seconds after which a first connection that found no server is a
    :class:`HubError`."""
    try:
        import nats  # noqa: F401  (checked here, used by each attempt)
    except ImportError as exc:
        raise HubError("NatsHub needs nats-py: pip install 'agentmesh[nats]'") from exc

    loop = asyncio.get_running_loop()
    give_up_at = None if give_up_after is None else loop.time() + give_up_after
    verdicts = _Verdicts(guarded)
    while True:
        attempt = _Attempt(
            servers,
            name=name,
            connect_timeout=connect_timeout,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
            options=options,
            verdicts=verdicts,
        )
        left = None if give_up_at is None else max(0.0, give_up_at - loop.time())
        nc = await attempt.run(left)
        if nc is not None:
            verdicts.seen.clear()  # (their tracebacks would live as long as the connection)
            return nc
        if attempt.dropped:
            verdicts.attempt_dropped(attempt.seen_before)
        out_of_time = give_up_at is not None and loop.time() + _RETRY_WAIT >= give_up_at
        if not (guarded and attempt.dropped) or verdicts.enough.is_set() or out_of_time:
            break
        log.info(
            "NATS connection %s: the servers dropped it (%d of %d): trying again",
            name,
            verdicts.counted["dropped"],
            _DROPS,
        )
        await asyncio.sleep(_RETRY_WAIT)
    failure = attempt.failure
    if failure is None and verdicts.seen:
        failure = verdicts.seen[-1]
    elif failure is None:
        failure = ConnectionError(
            "the server closed the connection"
            if attempt.dropped
            else f"no server answered in {give_up_after}s"
        )
    if _refused(failure) or verdicts.seen or (guarded and attempt.dropped):
        raise NatsAuthError(
            f"the NATS servers {', '.join(servers)} refused the connection of {name} "
            f"({failure or type(failure).__name__}): the agentmesh authorization service "
            "(agentmesh nats-auth) is down or unreachable, or refused the proof (its log says "
            "which)"
        ) from failure
    raise HubError(
        f"cannot connect to the NATS servers {', '.join(servers)}: {failure}"
    ) from failure


class _Verdicts:
    """The refusals and drops a first connection met, over all its attempts."""

    def __init__(self, guarded: bool) -> None:
        self.guarded = guarded
        self.seen: list[BaseException] = []  # refused or dropped, in order
        self.counted = {"refused": 0, "dropped": 0}
        self.enough = asyncio.Event()  # set: give up

    def note(self, exc: BaseException) -> None:
        """An error nats-py reported while the connection was not yet in. nats-py reports one
        reset twice (when it happens, and again when it closes the transport): it counts once."""
        if any(exc is earlier for earlier in self.seen):
            return
        if _refused(exc):
            self.seen.append(exc)
            self.count("refused")
        elif self.guarded and _dropped(exc):
            self.seen.append(exc)
            self.count("dropped")

    def attempt_dropped(self, seen_before: int) -> None:
        """An attempt that ended dropped counts as one drop when nats-py reported none."""
        if len(self.seen) == seen_before:
            self.count("dropped")

    def count(self, kind: str) -> None:
        self.counted[kind] += 1
        if self.counted["refused"] >= _REFUSALS or self.counted["dropped"] >= _DROPS:
            self.enough.set()


class _Attempt:
    """One nats-py client trying to connect: it ends connected, given up (refused often enough,
    out of time), or dropped by the server before it was in (nats-py then closes the client
    for good, or starts reconnecting it; the next attempt takes a new one)."""

    def __init__(
        self,
        servers: list[str],
        *,
        name: str,
        connect_timeout: float,
        on_disconnect: Callable[[], None] | None,
        on_reconnect: Callable[[], None] | None,
        options: Mapping[str, Any] | None,
        verdicts: _Verdicts,
    ) -> None:
        self.servers, self.name, self.connect_timeout = servers, name, connect_timeout
        self.on_disconnect, self.on_reconnect = on_disconnect, on_reconnect
        self.options, self.verdicts = options, verdicts
        self.failure: BaseException | None = None  # what nats-py's connect() raised
        self.dropped = False
        self.seen_before = len(verdicts.seen)
        self.connected = False

    async def run(self, timeout: float | None) -> Any:
        """The connected client, or None (``failure`` and ``dropped`` say why)."""
        import nats

        guarded = self.verdicts.guarded
        nc: Any = _guarded_client()() if guarded else nats.NATS()
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
        giving_up = asyncio.ensure_future(self.verdicts.enough.wait())
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait(
                {connecting, giving_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            # (nats-py returns from connect() still connecting when the server sent its own
            # PING before answering ours, as it does while a callout is pending: wait until it
            # is one or the other; a client that starts reconnecting was dropped)
            settle_by = loop.time() + self.connect_timeout
            settled_late = False
            while connecting.done() and not connecting.exception() and not nc.is_connected:
                settled_late = True
                if (
                    nc.is_closed
                    or (guarded and nc.is_reconnecting)
                    or self.verdicts.enough.is_set()
                    or loop.time() > settle_by
                ):
                    break
                await asyncio.sleep(0.02)
            # (nats-py marks a reconnected client connected before the server answered it)
            confirmed = nc.is_connected and (not settled_late or await self._answers(nc))
        except BaseException:  # cancelled from outside: nothing keeps trying behind the caller
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await nc.close()
            raise
        finally:
            giving_up.cancel()
        if confirmed and connecting.done() and connecting.exception() is None:
            self.connected = True  # (its later errors are no verdict on a first connection)
            return nc
        self.dropped = connecting.done() and not connecting.exception()
        try:
            if connecting.done():
                self.failure = connecting.exception()
            else:
                connecting.cancel()
                await asyncio.wait({connecting})  # (an outside cancel still reaches the caller)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        return None

    async def _answers(self, nc: Any) -> bool:
        try:
            await nc.flush(self.connect_timeout)
        except Exception:  # (nats-py's timeout, or the connection gone)
            return False
        return True

    async def _disconnected(self) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect()

    async def _reconnected(self) -> None:
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS connection %s: %s", self.name, exc)
        if not self.connected:
            self.verdicts.note(exc)


#: What nats-server says when it drops a connection's user: refused on a re-authentication, or
#: its user expired (the authorization service's users do).
_USER_DROPPED = ("authorization violation", "user authentication expired", "authentication timeout")


def _guarded_client() -> type:
    """nats-py's client, but one that reconnects (with a new proof) when the server drops its
    user: nats-py closes a connection for good on those errors, which would end an agent whose
    user expired while no authorization service could renew it."""
    from nats.aio.client import Client
    from nats.errors import AuthorizationError

    class GuardedClient(Client):  # type: ignore[misc]
        async def _process_err(self, err_msg: str) -> None:
            if self.is_connected and any(m in err_msg.lower() for m in _USER_DROPPED):
                log.info("NATS dropped the connection's user (%s): reconnecting", err_msg.strip())
                await self._process_op_err(AuthorizationError())
                return
            await super()._process_err(err_msg)

    return GuardedClient


def _dropped(exc: BaseException) -> bool:
    """Whether ``exc`` is a server closing a connection without a reason (on a guarded cluster:
    its callout went unanswered in time)."""
    from nats.errors import UnexpectedEOF

    return isinstance(exc, (ConnectionResetError, BrokenPipeError, UnexpectedEOF))


def _refused(exc: BaseException) -> bool:
    from nats.errors import AuthorizationError

    return isinstance(exc, AuthorizationError) or "authorization" in str(exc).lower()
