"""What a :class:`~agentmesh.nats_backend.NatsBackend` asks of the cluster's directory and
stream: lookups (bundles, claims, presence, counts), this agent's own entries (its bundle, its
one-time prekeys; through the authorization service when the cluster has one,
:mod:`agentmesh.nats_auth_writes`), the stream's layout and the inbox consumer's state, with the
patience a cluster electing a leader needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import nats_auth_queries as auth_queries
from .errors import HubError, HubRequestError
from .hub_protocol import ErrorCode
from .nats_auth_client import claim_prekey
from .nats_auth_writes import write_bundle, write_prekeys
from .nats_directory import NatsDirectory
from .nats_layout import NatsLayout
from .nats_setup import NatsSettings, consumer_config, ensure_layout

__all__ = ["ATTEMPT_TIMEOUT", "_NatsDirectoryCalls"]

log = logging.getLogger("agentmesh.nats")

T = TypeVar("T")

#: Seconds one request to the cluster may take before it is asked again (a request made
#: while a leader is elected can go unanswered; the patience around it is ``request_timeout``).
ATTEMPT_TIMEOUT = 5.0


class _NatsDirectoryCalls:
    """The directory and stream calls of :class:`~agentmesh.nats_backend.NatsBackend`, which
    sets up the state declared here."""

    auth: bool
    layout: NatsLayout
    request_timeout: float
    directory: NatsDirectory | None
    _nc: Any
    _js: Any
    _keypair: Any
    _agent_id: str | None
    _closed: bool
    settings: NatsSettings

    @property
    def where(self) -> str:
        raise NotImplementedError

    async def _ensure_layout(self, replicas: int) -> Any:
        return await ensure_layout(
            self._js, self.settings, replicas, self._read_stream if self.auth else None
        )

    async def _patiently(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs ``attempt`` again after any failure but a refusal (HubError) until
        ``request_timeout`` has passed: right after a cluster (re)starts, its streams have no
        leader for a few seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        delay = 0.1
        while True:
            try:
                return await asyncio.wait_for(attempt(), max(deadline - loop.time(), 0.1))
            except HubError:
                raise
            except Exception as exc:
                if loop.time() + delay > deadline:
                    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                        raise HubError(f"{what}: {self.where} did not answer in time") from exc
                    raise HubError(f"{what} on {self.where}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _in_time(self, what: str, work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, self.request_timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise HubError(f"{what}: {self.where} did not answer in time") from exc
        except HubError:
            raise
        except Exception as exc:
            raise HubError(f"{what} on {self.where}: {type(exc).__name__}: {exc}") from exc

    async def _read_stream(self) -> Any:
        """The inbox stream's info; with the authorization service through it (an agent may
        not read it: nats_auth_queries)."""
        if self.auth:
            return await auth_queries.stream_info(
                self._nc, self.layout, min(self.request_timeout, ATTEMPT_TIMEOUT)
            )
        return await self._js.stream_info(self.layout.stream)

    async def _publish_bundle(self, keypair: Any, bundle: dict[str, Any]) -> None:
        """Binds the id or publishes a newer bundle: with the authorization service through it
        (an agent writes nothing in the directory itself, nats_auth_writes), else directly."""
        if not self.auth:
            await self._directory().bind(bundle)
            return
        timeout = min(self.request_timeout, ATTEMPT_TIMEOUT)
        await self._patiently(
            f"publishing the bundle of {keypair.agent_id!r}",
            lambda: write_bundle(self._nc, self.layout, keypair, bundle, timeout),
        )

    def _directory(self) -> NatsDirectory:
        if self._closed:
            raise HubError("the NATS backend is closed")
        if self.directory is None:
            raise HubError("not connected: call register() or connect_lookup() first")
        return self.directory

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return await self._directory().get_bundle(agent_id)

    async def claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        directory = self._directory()
        bundle = await directory.get_bundle(agent_id)
        if bundle is None or agent_id == self._agent_id or self._agent_id is None:
            return bundle
        if self.auth:
            claimed = await claim_prekey(
                self._nc, self.layout, self._agent_id, agent_id, self.request_timeout
            )
        else:
            claimed = await directory.claim_prekey(agent_id)
        if claimed is not None:
            bundle["one_time_prekey"] = claimed
        return bundle

    async def add_prekeys(self, prekeys: list[dict[str, Any]]) -> int:
        if self._agent_id is None:
            raise HubError("only a registered backend can add its prekeys")
        if not self.auth:
            return await self._directory().add_prekeys(self._agent_id, prekeys)
        timeout = min(self.request_timeout, ATTEMPT_TIMEOUT)
        return await self._patiently(
            f"adding prekeys of {self._agent_id!r}",
            lambda: write_prekeys(self._nc, self.layout, self._keypair, prekeys, timeout),
        )

    async def update_bundle(self, bundle: dict[str, Any]) -> None:
        if self._agent_id is None:
            raise HubError("only a registered backend can publish its bundle")
        if bundle.get("agent_id") != self._agent_id:
            raise HubRequestError(ErrorCode.BAD_REQUEST, "the bundle is not this agent's")
        await self._publish_bundle(self._keypair, bundle)

    async def list_agents(self) -> list[str]:
        return await self._directory().list_agents()

    async def is_online(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is registered and polling its inbox now (a connected agent
        always has a fetch waiting at its consumer, but for a moment between two)."""
        if await self._directory().get_bundle(agent_id) is None:
            return False
        if self.auth:
            return await auth_queries.is_online(
                self._nc, self.layout, agent_id, self.request_timeout
            )
        from nats.js.errors import NotFoundError

        try:
            info = await self._in_time(
                f"asking whether {agent_id!r} is online",
                self._js.consumer_info(self.layout.stream, self.layout.consumer(agent_id)),
            )
        except HubError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return False
            raise
        return int(info.num_waiting or 0) > 0

    async def message_count(self) -> int:
        """Envelopes the inbox stream has accepted since it was created."""
        self._directory()
        info = await self._in_time("counting messages", self._read_stream())
        return int(info.state.last_seq or 0)

    # -- the inbox's consumer (for nats_receiver) -------------------------------------------

    async def _pending_deliveries(self) -> int:
        """Deliveries the consumer counts as pending (acknowledgements sent first)."""
        assert self._agent_id is not None
        await self._nc.flush(ATTEMPT_TIMEOUT)
        info = await self._js.consumer_info(
            self.layout.stream, self.layout.consumer(self._agent_id)
        )
        return int(info.num_ack_pending or 0)

    async def _resubscribe(self) -> None:
        """After fetches failed for a while: the consumer again, made if it went missing.
        The subscription stays (a new one would leave deliveries in flight to the old inbox
        unacknowledged until the ack wait)."""
        assert self._agent_id is not None
        log.info("the inbox of %r does not answer: making sure its consumer exists", self._agent_id)
        if self.auth:
            return  # the service makes it, at every connection
        config = consumer_config(self.layout, self._agent_id)
        try:
            await asyncio.wait_for(
                self._js.add_consumer(self.layout.stream, config), self.request_timeout
            )
        except Exception as exc:
            log.info("the consumer of %r is still unreachable (%s)", self._agent_id, exc)
