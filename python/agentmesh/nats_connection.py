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
#: Connections dropped without a reason (a server whose callout went unanswered) after which a
#: first connection gives up, counted apart from refusals: a cluster keeps sending callouts to
#: an authorization service that just died until it notices (a moment, longer on a loaded
#: machine), while another service would answer the next attempt.
_DROPS = 4


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
    the servers keep refusing (``Authorization Violation``)
    is a :class:`NatsAuthError` (nats-py alone would keep trying); ``give_up_after``: seconds
    after which a first connection that found no server is a :class:`HubError`."""
    try:
        import nats
    except ImportError as exc:
        raise HubError("NatsHub needs nats-py: pip install 'agentmesh[nats]'") from exc

    refusals: list[BaseException] = []  # refused or dropped, in order
    counted = {"refused": 0, "dropped": 0}
    refused = asyncio.Event()

    async def disconnected() -> None:
        if on_disconnect is not None:
            on_disconnect()

    async def reconnected() -> None:
        if on_reconnect is not None:
            on_reconnect()

    async def error(exc: Exception) -> None:
        log.debug("NATS connection %s: %s", name, exc)
        # (a server whose callout got no answer in time drops the connection, no reason given)
        dropped = guarded and isinstance(exc, (ConnectionResetError, BrokenPipeError))
        if _refused(exc) or dropped:
            refusals.append(exc)
            counted["refused" if _refused(exc) else "dropped"] += 1
            if counted["refused"] >= _REFUSALS or counted["dropped"] >= _DROPS:
                refused.set()

    nc: Any = _guarded_client()() if guarded else nats.NATS()
    connecting = asyncio.ensure_future(
        nc.connect(
            servers=servers,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            ping_interval=5,
            max_outstanding_pings=3,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            **dict(options or {}),
        )
    )
    giving_up = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait(
            {connecting, giving_up}, timeout=give_up_after, return_when=asyncio.FIRST_COMPLETED
        )
        # (nats-py returns from connect() still connecting when the server closed the
        # connection instead of answering its PING: wait until it is one or the other)
        settle_by = asyncio.get_running_loop().time() + connect_timeout
        while connecting.done() and not connecting.exception() and not nc.is_connected:
            if nc.is_closed or refused.is_set() or asyncio.get_running_loop().time() > settle_by:
                break
            await asyncio.sleep(0.02)
    except BaseException:  # cancelled from outside: nothing keeps trying behind the caller
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await nc.close()
        raise
    finally:
        giving_up.cancel()
    if connecting.done() and connecting.exception() is None and nc.is_connected:
        return nc
    failure: BaseException | None = None
    # (a server drops a connection whose callout went unanswered: nats-py may not report it)
    dropped_early = connecting.done() and not connecting.exception() and not nc.is_connected
    if connecting.done():
        failure = connecting.exception()
    else:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
    with contextlib.suppress(Exception):
        await nc.close()
    if failure is None and refusals:
        failure = refusals[-1]
    elif failure is None:
        failure = ConnectionError(
            "the server closed the connection"
            if dropped_early
            else f"no server answered in {give_up_after}s"
        )
    cause = failure
    if _refused(cause) or refusals or (guarded and dropped_early):
        raise NatsAuthError(
            f"the NATS servers {', '.join(servers)} refused the connection of {name} "
            f"({cause or type(cause).__name__}): the agentmesh authorization service (agentmesh "
            "nats-auth) is down or unreachable, or refused the proof (its log says which)"
        ) from cause
    raise HubError(f"cannot connect to the NATS servers {', '.join(servers)}: {cause}") from cause


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


def _refused(exc: BaseException) -> bool:
    from nats.errors import AuthorizationError

    return isinstance(exc, AuthorizationError) or "authorization" in str(exc).lower()
