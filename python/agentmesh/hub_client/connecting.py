"""Getting a HubClient a connection: TCP or TLS, the hub's challenge, registering, and
reconnecting with backoff after a connection is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl as _ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from agentmesh.errors import HubError
from agentmesh.hub_client.connection import Connection, FrameHandlers
from agentmesh.hub_protocol import (
    CLIENT_NONCE_SIZE,
    PROTOCOL_VERSION,
    ErrorCode,
    HubRequestError,
    Welcome,
    encode_hello,
    encode_register,
)

__all__ = ["FATAL_CODES", "handshake", "open_connection", "reconnect", "register_frame"]

log = logging.getLogger(__name__)

#: Errors after which reconnecting cannot help: the client stops and reports them.
FATAL_CODES = frozenset(
    {
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.BAD_REGISTRATION,
        ErrorCode.ID_TAKEN,
        ErrorCode.REPLACED,
        ErrorCode.TOO_MANY_AGENTS,
    }
)

# Reconnect jitter from a generator of our own: a library must not move the global `random`
# state that its users (and their seeded tests) rely on.
_jitter = random.Random()

#: Connected, welcomed and ready: the connection, the hub's WELCOME and its READY information.
Connected = tuple[Connection, Welcome, dict[str, Any]]


async def open_connection(
    host: str,
    port: int,
    ssl: _ssl.SSLContext | None,
    timeout: float,
    handlers: FrameHandlers,
    introduce: Callable[[Connection, Welcome], bytes],
    make: Callable[[FrameHandlers, str, asyncio.AbstractEventLoop], Connection] = Connection,
) -> Connected:
    """Connects, says HELLO, checks the hub's protocol version, sends what ``introduce``
    returns for the hub's WELCOME (REGISTER or LOOKUP) and waits for READY; each step within
    ``timeout`` seconds. Raises :class:`HubError` (a :class:`HubRequestError` for a refusal).
    ``make`` makes the connection (a :class:`~agentmesh.hub_client.channels.Carrier`, say)."""
    loop = asyncio.get_running_loop()
    conn = make(handlers, f"{host}:{port}", loop)
    with _aborted_on_failure(conn, f"{host}:{port}"):
        await asyncio.wait_for(
            loop.create_connection(
                lambda: conn,
                host,
                port,
                ssl=ssl,
                server_hostname=host if ssl is not None else None,
            ),
            timeout,
        )
    return await handshake(conn, f"{host}:{port}", timeout, introduce)


async def handshake(
    conn: Connection, hub: str, timeout: float, introduce: Callable[[Connection, Welcome], bytes]
) -> Connected:
    """HELLO, the hub's WELCOME (its protocol version checked), what ``introduce`` says, READY:
    on a connection of its own or on a channel of a shared one."""
    with _aborted_on_failure(conn, hub):
        conn.write(encode_hello())
        welcome = await asyncio.wait_for(asyncio.shield(conn.welcome), timeout)
        if welcome.version != PROTOCOL_VERSION:
            # An earlier version's proof covers the challenge alone: a hub could relay it
            # to another hub and register there as this agent.
            raise HubRequestError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"hub {hub} speaks protocol version {welcome.version}; "
                f"this client speaks only version {PROTOCOL_VERSION}",
            )
        conn.write(introduce(conn, welcome))
        info = await asyncio.wait_for(asyncio.shield(conn.ready), timeout)
    return conn, welcome, info


@contextlib.contextmanager
def _aborted_on_failure(conn: Connection, hub: str) -> Iterator[None]:
    """Aborts ``conn`` if the block fails, with a :class:`HubError` naming ``hub``."""
    try:
        yield
    except HubError:
        conn.abort()
        raise
    except (asyncio.TimeoutError, TimeoutError):
        conn.abort()
        raise HubError(f"hub {hub} did not answer in time") from None
    except (OSError, _ssl.SSLError) as exc:
        conn.abort()
        raise HubError(f"cannot connect to hub {hub}: {exc}") from exc
    except BaseException:
        conn.abort()
        raise


def register_frame(keypair: Any, session: bytes, conn: Connection, welcome: Welcome) -> bytes:
    """REGISTER with a proof bound to this hub (its id and, over TLS, the certificate this
    connection was made with), this challenge, a nonce of ours, and the bundle sent."""
    bundle = keypair.public_bundle()
    nonce = os.urandom(CLIENT_NONCE_SIZE)
    signature = keypair.sign_registration(
        bundle, welcome.hub_id, welcome.challenge, nonce, conn.tls_certificate_sha256()
    )
    return encode_register(bytes(signature), session, nonce, bundle)


async def reconnect(
    connect: Callable[[], Awaitable[Connected]],
    closing: Callable[[], bool],
    max_backoff: float,
    hub: str,
) -> Connected | None:
    """Calls ``connect`` until it succeeds, backing off (with jitter) up to ``max_backoff``
    seconds between tries; None once ``closing()``. Raises a refusal reconnecting cannot
    help with (:data:`FATAL_CODES`)."""
    backoff = 0.05
    while not closing():
        try:
            new, welcome, info = await connect()
        except HubRequestError as exc:
            if exc.code in FATAL_CODES:
                raise
            log.info("reconnect to %s refused: %s", hub, exc)
        except HubError as exc:
            log.debug("reconnect to %s failed: %s", hub, exc)
        else:
            if closing():
                new.close()
                return None
            return new, welcome, info
        await asyncio.sleep(backoff * (0.5 + _jitter.random()))
        backoff = min(backoff * 2, max_backoff)
    return None
