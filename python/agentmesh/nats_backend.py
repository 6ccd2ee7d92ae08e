"""The backend (:mod:`agentmesh.backend`) of one agent on a NATS JetStream cluster.

One :class:`NatsBackend` is one agent's connection to the cluster (nats-py, reconnecting by
itself to any server it knows). It registers by publishing its bundle to the directory
(:mod:`agentmesh.nats_directory`; the first identity key binds the id; behind the
authorization service, the service writes it: :mod:`agentmesh.nats_auth_writes`), sends through an
:class:`~agentmesh.nats_sender.OrderedSender`, and receives from its durable pull consumer
through an :class:`~agentmesh.nats_receiver.InboxReceiver`: batches in order of position (the
stream sequence; ``delivery_hub_id`` names the stream and the moment it was created, as a
recreated stream counts from 1 again), each acknowledged once ``on_batch``'s future has
completed, and never one handed over while an older delivery may still be outstanding.

See docs/nats.md for the layout, the settings and the trust model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .backend import OnBatch, Pace
from .crypto import Envelope, as_envelope, check_agent_id
from .errors import HubError, HubRequestError, PeerNotFoundError
from .fanout import address, check_recipients
from .hub_protocol import ErrorCode
from .nats_auth_client import Renewal, agent_options, reader_options
from .nats_connection import connect
from .nats_directory import MAX_PREKEYS, NatsDirectory
from .nats_directory_calls import ATTEMPT_TIMEOUT, _NatsDirectoryCalls
from .nats_layout import FETCH_BATCH, MAX_ENVELOPE, NatsLayout, token_of
from .nats_pull import InboxPuller
from .nats_receiver import FETCH_WAIT, InboxReceiver
from .nats_sender import OrderedSender
from .nats_setup import NatsSettings, check_server, consumer_config

__all__ = ["NatsBackend", "connect"]

log = logging.getLogger("agentmesh.nats")


class NatsBackend(_NatsDirectoryCalls):
    """One agent's connection to agentmesh on NATS (asyncio; one event loop). ``servers``:
    ``nats://host:port`` URLs of the cluster; ``settings``: see :class:`NatsSettings`."""

    def __init__(
        self,
        servers: list[str],
        *,
        settings: NatsSettings | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        auth: bool = False,
    ) -> None:
        self.servers = list(servers)
        self.auth = auth
        self._renewal: Renewal | None = None
        self.settings = settings or NatsSettings()
        self.layout: NatsLayout = self.settings.layout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.on_registered: Callable[[], None] | None = None
        self._nc: Any = None
        self._js: Any = None
        self.directory: NatsDirectory | None = None
        self._sender: OrderedSender | None = None
        self._keypair: Any = None
        self._agent_id: str | None = None
        self._on_batch: OnBatch | None = None
        self._hub_id: bytes = b""
        self._receiver: InboxReceiver | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<NatsBackend {self._agent_id or 'unregistered'} on {','.join(self.servers)}>"

    @property
    def prekey_limit(self) -> int | None:
        return MAX_PREKEYS

    @property
    def delivery_hub_id(self) -> bytes | None:
        return self._receiver.delivery_hub_id if self._receiver is not None else None

    @property
    def where(self) -> str:
        return f"the NATS cluster at {', '.join(self.servers)}"

    # -- connecting -----------------------------------------------------------------------------

    async def connect_lookup(self) -> None:
        """Connect for lookups only (no agent registered), making the layout if missing."""
        if self._nc is not None:
            return
        self._nc = await connect(
            self.servers,
            connect_timeout=self.connect_timeout,
            name="agentmesh-lookup",
            options=reader_options(),
            guarded=self.auth,
        )
        self._renew("lookups")
        self._js = self._nc.jetstream(timeout=min(self.request_timeout, ATTEMPT_TIMEOUT))
        replicas = check_server(self._nc, self.settings, guarded=self.auth)
        await self._patiently("setting up the stream", lambda: self._ensure_layout(replicas))
        self.directory = NatsDirectory(self._js, self.layout, timeout=self.request_timeout)

    async def register(
        self,
        keypair: Any,
        *,
        on_batch: OnBatch,
        handled: Mapping[bytes, int] | None = None,
        pace: Pace | None = None,
    ) -> None:
        if self._agent_id is not None:
            raise HubError(f"this backend is already registered as {self._agent_id!r}")
        if self._closed:
            raise HubError("the NATS backend is closed")
        agent_id = str(keypair.agent_id)
        check_agent_id(agent_id, "agent id")
        self._nc = await connect(
            self.servers,
            connect_timeout=self.connect_timeout,
            name=f"agentmesh-{token_of(agent_id)[:32]}",
            on_disconnect=self._disconnected,
            on_reconnect=self._reconnected,
            # (its own reply prefix also without the service: static users can be given it)
            options=(
                agent_options(self.layout, keypair)
                if self.auth
                else {"inbox_prefix": self.layout.reply_prefix(agent_id)}
            ),
            guarded=self.auth,
        )
        self._renew(repr(agent_id))
        try:
            self._js = self._nc.jetstream(timeout=min(self.request_timeout, ATTEMPT_TIMEOUT))
            replicas = check_server(self._nc, self.settings, guarded=self.auth)
            info = await self._patiently(
                "setting up the stream", lambda: self._ensure_layout(replicas)
            )
            self.directory = NatsDirectory(self._js, self.layout, timeout=self.request_timeout)
            await self._publish_bundle(keypair, keypair.public_bundle())
            if not self.auth:  # (with the authorization service, the service made it)
                await self._patiently(
                    f"making the inbox of {agent_id!r}",
                    lambda: self._js.add_consumer(
                        self.layout.stream, consumer_config(self.layout, agent_id)
                    ),
                )
            puller = InboxPuller(
                self._nc,
                self.layout.stream,
                self.layout.consumer(agent_id),
                FETCH_BATCH,
                FETCH_WAIT,
            )
            await puller.start()
            self._sender = OrderedSender(self._nc, self.layout.stream, self._is_registered)
            await self._sender.start()
        except BaseException:
            if self._renewal is not None:
                await self._renewal.stop()
            await self._nc.close()
            self._nc = None
            raise
        self._keypair, self._agent_id, self._on_batch = keypair, agent_id, on_batch
        self._hub_id = f"nats:{self.layout.stream}:{info.created}".encode()
        last = int(info.state.last_seq or 0)
        # (a position beyond what this stream ever held came from a recreated one: lowered)
        self._receiver = InboxReceiver(
            agent_id,
            puller,
            on_batch,
            hub_id=self._hub_id,
            seen=min(int((handled or {}).get(self._hub_id, 0)), last),
            pending=self._pending_deliveries,
            resubscribe=self._resubscribe,
            pace=pace,
        )
        self._tasks.append(asyncio.get_running_loop().create_task(self._receiver.run()))
        self._notify_registered()

    def _notify_registered(self) -> None:
        if self.on_registered is not None:
            try:
                self.on_registered()
            except Exception:
                log.exception("on_registered failed")

    def _disconnected(self) -> None:
        if self._sender is not None:
            self._sender.connection_lost()

    def _reconnected(self) -> None:
        if self._closed:
            return
        if self._sender is not None:
            self._sender.connection_back()
        if self._receiver is not None:
            self._receiver.connection_changed()
        if self._agent_id is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._register_again()))

    async def _register_again(self) -> None:
        """After a reconnect: publish the bundle again (the cluster may have been restored
        from an older state) until it is done, then tell the owner."""
        assert self.directory is not None
        delay = 0.1
        while not self._closed:
            try:
                await self._publish_bundle(self._keypair, self._keypair.public_bundle())
            except HubRequestError as exc:
                log.error("registering %r again was refused: %s", self._agent_id, exc)
                return
            except Exception as exc:
                log.info("registering %r again failed (%s): retrying", self._agent_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._notify_registered()
            return

    def _renew(self, what: str) -> None:
        """With the authorization service: renew the connection's user before it expires."""
        if self.auth:
            self._renewal = Renewal(self._nc, what, self.layout.service_ping)
            self._renewal.start()

    # -- sending --------------------------------------------------------------------------------

    async def _is_registered(self, agent_id: str) -> bool:
        assert self.directory is not None
        return await self.directory.get_bundle(agent_id) is not None

    def send_nowait(self, recipient: str, envelope: bytes, expires_ms: int = 0) -> bool:
        # (``expires_ms`` is not enforced by the cluster: the recipient drops what expired)
        sender = self._sender
        if self._closed:
            raise HubError("the NATS backend is closed")
        if sender is None:
            raise HubError("only a registered backend can send: call register() first")
        if sender.errors:
            raise sender.errors.popleft()
        if sender.recently_missing(recipient):
            raise PeerNotFoundError(
                ErrorCode.PEER_NOT_FOUND,
                f"Peer {recipient!r} not found on hub",
                recipient=recipient,
            )
        check_agent_id(recipient, "recipient id")
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            raise TypeError("envelope must be bytes")
        data = bytes(envelope)
        if len(data) > MAX_ENVELOPE:
            raise HubError(
                f"envelope of {len(data)} bytes exceeds the limit of {MAX_ENVELOPE} bytes"
            )
        try:
            env = Envelope.from_bytes(data)
        except Exception as exc:
            raise HubRequestError(ErrorCode.BAD_ENVELOPE, f"not an envelope: {exc}") from None
        if env.recipient != recipient or env.sender != self._agent_id:
            raise HubRequestError(
                ErrorCode.ENVELOPE_MISMATCH,
                f"the envelope goes from {env.sender!r} to {env.recipient!r}, not from "
                f"{self._agent_id!r} to {recipient!r}",
                recipient=recipient,
            )
        subject = self.layout.inbox_subject(recipient, self._agent_id)
        return sender.enqueue(recipient, subject, data, env.id)

    def send_group_nowait(self, recipients: list[str], envelope: bytes) -> bool:
        """One copy per recipient, published by the sender (``OrderedSender.enqueue_group``)."""
        sender = self._sender
        if self._closed or sender is None:
            raise HubError("the NATS backend is closed or not registered")
        if sender.errors:
            raise sender.errors.popleft()
        recipients = check_recipients(recipients)
        data = bytes(envelope)
        try:
            env = as_envelope(address(data, recipients[0]))
        except Exception as exc:
            raise HubRequestError(ErrorCode.BAD_ENVELOPE, f"not a group message: {exc}") from None
        if env.sender != self._agent_id or len(data) + 256 > MAX_ENVELOPE:
            raise HubRequestError(
                ErrorCode.ENVELOPE_MISMATCH,
                f"a group message from {env.sender!r} of {len(data)} bytes: not this agent's "
                f"({self._agent_id!r}), or over {MAX_ENVELOPE} bytes",
            )
        me, layout = self._agent_id, self.layout
        return sender.enqueue_group(
            recipients, lambda recipient: layout.inbox_subject(recipient, me), data, env.id
        )

    async def wait_for_room(self) -> None:
        if self._sender is not None:
            await self._sender.room.wait()

    def push(self) -> None:
        """Publishes leave as they are queued; nothing is held back for a batch."""

    async def flush(self, timeout: float | None = None) -> None:
        if self._sender is None:
            return
        await self._sender.flush(timeout, self.where)

    # -- closing --------------------------------------------------------------------------------

    async def close(self, timeout: float | None = 30.0) -> None:
        if self._closed:
            return
        error: BaseException | None = None
        if self._sender is not None:
            try:
                await self._sender.flush(timeout, self.where)
            except HubError as exc:
                error = exc
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._receiver is not None:
            await self._receiver.give_back()
        if self._renewal is not None:
            await self._renewal.stop()
        if self._sender is not None:
            await self._sender.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5.0)
        if error is not None:
            raise error
