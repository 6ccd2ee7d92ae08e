"""The directory on a NATS cluster: bundles and one-time prekeys in replicated KV buckets.

* **Binding**: an id is bound by a KV *create* of its bundle, which fails when the key
  exists: the first identity key wins. After a refusal or an ambiguous answer (a timeout
  during a leader election) the bundle is read back and compared, never assumed.
* **Newer bundles** replace the served one by a revision-checked update, and only with the
  same identity key and a newer signed prekey (``older_bundle``, the hub's rule).
* **Another identity key** replaces the bound one (a revision-checked update) only when the
  bundle's succession statements lead from the bound key to it (``rotate_identity``); the old
  key's one-time prekeys are dropped first.
* **One-time prekeys** of an agent are one KV value (a JSON list); a claim removes one by a
  revision-checked update, so of many concurrent claimers exactly one gets each key. An
  ambiguous answer hands out nothing (the key may be spent unused: never twice).
* Directory keys are never deleted.

The cluster is not trusted with keys: every bundle read is checked (its self-signature, and
that it is the id asked for) before it is returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .crypto import verify_bundle
from .errors import HubError, HubRequestError
from .hub.registration import older_bundle
from .hub_protocol import ErrorCode
from .nats_layout import NatsLayout
from .prekey_upload import parse_prekeys
from .succession import succession_problem

__all__ = ["MAX_PREKEYS", "NatsDirectory"]

log = logging.getLogger("agentmesh.nats")

#: One-time prekeys kept per agent (the network hub's ``max_prekeys_per_agent``).
MAX_PREKEYS = 100
#: Tries of a compare-and-set before giving up (each lost race means another writer won).
_CAS_TRIES = 50

T = TypeVar("T")


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


class NatsDirectory:
    """Bundles and prekeys of one deployment (``layout``), through a JetStream context."""

    def __init__(self, js: Any, layout: NatsLayout, *, timeout: float = 10.0) -> None:
        self.js = js
        self.layout = layout
        self.timeout = timeout
        self._buckets: dict[str, Any] = {}

    async def _bucket(self, name: str) -> Any:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = await self.js.key_value(name)
        return bucket

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs ``attempt`` again after a timeout or a cluster without a leader, until
        ``timeout`` seconds have passed (a leader election takes a few)."""
        from nats.errors import ConnectionClosedError, NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = 0.05
        while True:
            try:
                return await attempt()
            except (HubError, ConnectionClosedError):
                raise
            except (
                NatsTimeout,
                asyncio.TimeoutError,
                NoRespondersError,
                NoStreamResponseError,
                ServiceUnavailableError,
            ) as exc:
                if loop.time() + delay > deadline:
                    raise HubError(
                        f"{what}: the NATS cluster did not answer within {self.timeout:g}s "
                        f"({type(exc).__name__})"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- bundles --------------------------------------------------------------------------------

    async def _read(self, agent_id: str) -> tuple[dict[str, Any], int] | None:
        from nats.js.errors import KeyNotFoundError

        bucket = await self._bucket(self.layout.directory_bucket)
        try:
            entry = await bucket.get(self.layout.directory_key(agent_id))
        except KeyNotFoundError:
            return None
        return self._verified(agent_id, entry.value), entry.revision

    @staticmethod
    def _verified(agent_id: str, value: bytes | None) -> dict[str, Any]:
        try:
            bundle = json.loads(value or b"")
            if not isinstance(bundle, dict):
                raise ValueError("not an object")
            signed_id = verify_bundle(bundle)
        except Exception as exc:
            raise HubError(
                f"the directory's bundle for {agent_id!r} does not verify (tampered?): {exc}"
            ) from None
        if signed_id != agent_id:
            raise HubError(
                f"the directory's entry for {agent_id!r} holds a bundle of {signed_id!r}"
            )
        return bundle

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        found = await self._retrying(f"looking up {agent_id!r}", lambda: self._read(agent_id))
        return found[0] if found is not None else None

    async def bind(self, bundle: dict[str, Any]) -> None:
        """Publishes ``bundle`` (verified first) under its id: binds the id if new, replaces
        an older bundle of the same identity key; HubRequestError ``ID_TAKEN`` if the id is
        bound to another identity key, ``BAD_REGISTRATION`` for an older bundle."""
        try:
            agent_id = verify_bundle(bundle)
        except Exception as exc:
            raise HubRequestError(ErrorCode.BAD_REGISTRATION, f"invalid bundle: {exc}") from None
        bundle = {k: v for k, v in bundle.items() if k != "one_time_prekey"}
        await self._retrying(f"registering {agent_id!r}", lambda: self._bind_once(agent_id, bundle))

    async def _bind_once(self, agent_id: str, bundle: dict[str, Any]) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        bucket = await self._bucket(self.layout.directory_bucket)
        key = self.layout.directory_key(agent_id)
        for _ in range(_CAS_TRIES):
            found = await self._read(agent_id)
            try:
                if found is None:
                    await bucket.create(key, _encode(bundle))
                    log.info("bound agent id %r to its identity key", agent_id)
                    return
                current, revision = found
                bound = current.get("identity_key")
                if bound != bundle.get("identity_key"):
                    refusal = (
                        succession_problem(agent_id, str(bound), bundle)
                        if "succession" in bundle
                        else ""
                    )
                    if refusal is not None:
                        why = f"; succession statements refused: {refusal}" if refusal else ""
                        raise HubRequestError(
                            ErrorCode.ID_TAKEN,
                            f"agent id {agent_id!r} is bound to another identity key{why}",
                        )
                    await self.drop_prekeys(agent_id)
                    await bucket.update(key, _encode(bundle), last=revision)
                    log.info("agent id %r moved to a new identity key (succession)", agent_id)
                    return
                if current == bundle:
                    return
                problem = older_bundle(current, bundle)
                if problem is not None:
                    raise HubRequestError(ErrorCode.BAD_REGISTRATION, problem)
                await bucket.update(key, _encode(bundle), last=revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another writer was first: read again and compare
        raise HubError(f"registering {agent_id!r}: the directory entry keeps changing")

    async def list_agents(self) -> list[str]:
        # The bucket's subjects, as its stream's leader counts them: one request, and
        # consistent (nats-py's ``keys()`` reads through a watcher, which under load can end
        # with no keys for a bucket that has them: an empty directory where there is none).
        bucket = self.layout.directory_bucket
        prefix = f"$KV.{bucket}."

        async def keys() -> list[str]:
            info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
            subjects = info.state.subjects or {}
            return [subject[len(prefix) :] for subject in subjects]

        found = await self._retrying("listing agents", keys)
        ids = (self.layout.agent_of_directory_key(k) for k in found)
        return sorted(i for i in ids if i is not None)

    # -- one-time prekeys -----------------------------------------------------------------------

    async def _prekeys(self, agent_id: str) -> tuple[list[dict[str, Any]], int]:
        """The agent's stock and its revision (0: none ever)."""
        from nats.js.errors import KeyNotFoundError

        bucket = await self._bucket(self.layout.prekey_bucket)
        try:
            entry = await bucket.get(self.layout.prekey_key(agent_id))
        except KeyNotFoundError:
            return [], 0
        try:
            stock = [{"id": i, "key": k} for i, k in parse_prekeys((entry.value or b"").decode())]
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("the prekey stock of %r is unreadable (%s): replaced", agent_id, exc)
            stock = []
        return stock, entry.revision

    async def _store_prekeys(
        self, agent_id: str, stock: list[dict[str, Any]], revision: int
    ) -> None:
        bucket = await self._bucket(self.layout.prekey_bucket)
        key = self.layout.prekey_key(agent_id)
        if revision == 0:
            await bucket.create(key, _encode(stock))
        else:
            await bucket.update(key, _encode(stock), last=revision)

    async def drop_prekeys(self, agent_id: str) -> None:
        """Empties the agent's one-time prekey stock (a rotation: they belong to the old key,
        and the new key's ids start again, so one could be handed out for the wrong key)."""
        from nats.js.errors import KeyWrongLastSequenceError

        for _ in range(_CAS_TRIES):
            stock, revision = await self._prekeys(agent_id)
            if not stock:
                return
            try:
                await self._store_prekeys(agent_id, [], revision)
                return
            except KeyWrongLastSequenceError:
                continue
        raise HubError(f"dropping the prekeys of {agent_id!r}: the stock keeps changing")

    async def add_prekeys(self, agent_id: str, prekeys: list[dict[str, Any]]) -> int:
        """Adds the agent's own one-time prekeys (up to :data:`MAX_PREKEYS` held; the rest is
        ignored); returns how many are held."""
        try:
            fresh = [{"id": i, "key": k} for i, k in parse_prekeys(json.dumps(list(prekeys)))]
        except ValueError as exc:
            raise HubRequestError(ErrorCode.BAD_REQUEST, str(exc)) from None

        async def attempt() -> int:
            from nats.js.errors import KeyWrongLastSequenceError

            for _ in range(_CAS_TRIES):
                stock, revision = await self._prekeys(agent_id)
                if not fresh:
                    return len(stock)
                held = {item["id"] for item in stock}
                room = MAX_PREKEYS - len(stock)
                new = [item for item in fresh if item["id"] not in held][: max(room, 0)]
                if not new:
                    return len(stock)
                try:
                    await self._store_prekeys(agent_id, stock + new, revision)
                except KeyWrongLastSequenceError:
                    continue
                return len(stock) + len(new)
            raise HubError(f"adding prekeys of {agent_id!r}: the stock keeps changing")

        return await self._retrying(f"adding prekeys of {agent_id!r}", attempt)

    async def claim_prekey(self, agent_id: str) -> dict[str, Any] | None:
        """Removes one of the agent's one-time prekeys and returns it (None if none is left,
        or if the cluster's answer to the removal was ambiguous)."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import KeyWrongLastSequenceError

        async def attempt() -> dict[str, Any] | None:
            for _ in range(_CAS_TRIES):
                stock, revision = await self._prekeys(agent_id)
                if not stock:
                    return None
                claimed, rest = stock[0], stock[1:]
                try:
                    await self._store_prekeys(agent_id, rest, revision)
                except KeyWrongLastSequenceError:
                    continue  # another claimer (or the owner) was first
                except (NatsTimeout, asyncio.TimeoutError):
                    # it may have been removed: hand it out never rather than twice
                    return None
                return claimed
            return None

        # (no responders, no leader: the removal reached no stream, so it is tried again, on a
        # fresh read, until the cluster answers; a timeout above is not, it may have landed)
        return await self._retrying(f"claiming a prekey of {agent_id!r}", attempt)
