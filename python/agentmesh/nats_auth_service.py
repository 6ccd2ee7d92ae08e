"""``agentmesh nats-auth``: the authorization service of agentmesh on NATS (auth callout).

Every server of the cluster hands each new connection to this service (``$SYS.REQ.USER.AUTH``)
and lets it in with the permissions the service answers with, as a user that expires after
``lifetime`` seconds. Stateless but for its budgets (prekey claims, new ids,
:mod:`agentmesh.nats_auth_budgets`): run two or more (they share the requests as one queue
group), any of them answers.

* A connection that carries an **agent proof** (its bundle as the token, and as the signature
  its identity key's signature under the label ``agentmesh/v1/sig/nats-connect`` over the
  server's nonce for this connection, its id and the bundle: never a raw nonce signature) gets
  that agent's permissions (:mod:`agentmesh.nats_auth_permissions`), if the directory binds the
  id to that key, or binds nothing yet (the service then binds it: of two first connections
  with different keys, only one gets in). The service also creates the agent's consumer: no
  agent may create one.
* A connection without a proof gets a **reader**'s permissions (lookups only).
* Anything else is refused, with the reason in this service's log (the client is told only
  "Authorization Violation").

It answers agents' questions about the inbox stream and presence
(:mod:`agentmesh.nats_auth_queries`), which they may not ask the cluster directly, and it takes
one-time prekey **claims** (``<prefix>.svc.claim.<requester token>``, which only
the requester may publish to): agents cannot write each other's prekey stock, so the service
removes one for them, within per-requester and per-target budgets per minute. It also writes
each agent's own bundle and prekeys for it, and only for the key the directory binds
(:mod:`agentmesh.nats_auth_writes`): agents write nothing in the directory themselves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._native import check_agent_id, fingerprint_of, verify_bundle, verify_nats_connect
from .errors import HubError, NatsAuthError
from .nats_auth_budgets import ClaimBudget, RegistrationBudget
from .nats_auth_config import AUTH_TIMEOUT, AuthKeys
from .nats_auth_jwt import Permissions, authorization_response, decode_jwt, user_jwt
from .nats_auth_permissions import agent_permissions, reader_permissions
from .nats_auth_queries import answer_presence, answer_stream
from .nats_auth_writes import answer_write
from .nats_connection import connect
from .nats_directory import NatsDirectory
from .nats_layout import id_of_token
from .nats_setup import NatsSettings, check_server, consumer_config, ensure_layout
from .succession import succession_problem

__all__ = ["ClaimBudget", "NatsAuthService", "RegistrationBudget"]

log = logging.getLogger("agentmesh.nats.auth")

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
#: The audience of the servers' authorization requests.
REQUEST_AUDIENCE = "nats-authorization-request"
QUEUE = "agentmesh-auth"
#: The account users are placed in (the servers' global account, when no accounts are set).
ACCOUNT = "$G"
#: Requests decided at once by one service (each reads the directory, and may write it): many
#: agents connecting together, after a restart, must not wait in line past the servers' timeout.
CONCURRENCY = 64


class NatsAuthService:
    """One instance of the service (asyncio). ``keys``: see :class:`AuthKeys`; ``lifetime``:
    seconds an issued user lasts (agents renew before it ends)."""

    def __init__(
        self,
        servers: Sequence[str],
        keys: AuthKeys,
        *,
        settings: NatsSettings | None = None,
        lifetime: float = 600.0,
        budget: ClaimBudget | None = None,
        registrations: RegistrationBudget | None = None,
    ) -> None:
        if lifetime < 2:
            raise ValueError(f"lifetime must be at least 2 seconds, not {lifetime!r}")
        self.servers = list(servers)
        self.keys = keys
        self.settings = settings or NatsSettings()
        self.layout = self.settings.layout
        self.lifetime = float(lifetime)
        self.budget = budget or ClaimBudget()
        self.registrations = registrations or RegistrationBudget()
        self._nc: Any = None
        self._js: Any = None
        self._directory: NatsDirectory | None = None
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, connect_timeout: float = 30.0) -> None:
        """Connects (as the service user: no callout), makes the layout if missing, serves."""
        self._nc = await connect(
            self.servers,
            connect_timeout=min(connect_timeout, 10.0),
            name="agentmesh-nats-auth",
            options={"nkeys_seed_str": self.keys.service.seed.decode("ascii")},
            give_up_after=connect_timeout,
        )
        self._js = self._nc.jetstream(timeout=AUTH_TIMEOUT / 2)
        replicas = check_server(self._nc, self.settings)
        await self._patiently(
            "setting up the stream and buckets",
            lambda: ensure_layout(self._js, self.settings, replicas),
            connect_timeout,
        )
        directory = self._directory = NatsDirectory(
            self._js, self.layout, timeout=AUTH_TIMEOUT * 0.6
        )
        await self._nc.subscribe(AUTH_SUBJECT, queue=QUEUE, cb=self._spawn(self._on_auth))
        await self._nc.subscribe(
            self.layout.claim_subjects, queue=QUEUE, cb=self._spawn(self._on_claim)
        )
        await self._nc.subscribe(
            self.layout.write_subjects,
            queue=QUEUE,
            cb=self._spawn(lambda m: answer_write(directory, m)),
        )
        await self._nc.subscribe(self.layout.service_ping, queue=QUEUE, cb=_pong)
        await self._nc.subscribe(
            self.layout.service_stream,
            queue=QUEUE,
            cb=self._spawn(lambda m: answer_stream(self._nc, self.layout, m, AUTH_TIMEOUT / 2)),
        )
        await self._nc.subscribe(
            self.layout.service_presence,
            queue=QUEUE,
            cb=self._spawn(lambda m: answer_presence(self._js, self.layout, m)),
        )
        await self._nc.flush()
        log.info("serving authorization on %s", ", ".join(self.servers))

    @staticmethod
    async def _patiently(what: str, attempt: Callable[[], Awaitable[Any]], patience: float) -> None:
        """Right after a cluster starts its streams have no leader for a few seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                await attempt()
                return
            except HubError:
                raise
            except Exception as exc:
                if loop.time() > deadline:
                    raise HubError(f"{what}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(0.5)

    def _spawn(self, handle: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """A subscription callback that hands each message to a task of its own (nats-py runs
        one subscription's callbacks one after the other)."""

        async def run(msg: Any) -> None:
            async with self._slots:
                await handle(msg)

        async def spawn(msg: Any) -> None:
            task = asyncio.get_running_loop().create_task(run(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return spawn

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    # -- authorization --------------------------------------------------------------------------

    async def _on_auth(self, msg: Any) -> None:
        try:
            claims = decode_jwt(msg.data.decode("utf-8", "replace"))
            if claims.get("aud") != REQUEST_AUDIENCE:
                raise HubError(f"its audience is {claims.get('aud')!r}")
            request = claims["nats"]
            user_nkey = str(request["user_nkey"])
            server_id = str(request["server_id"]["id"])
        except (HubError, KeyError, TypeError) as exc:
            log.warning("an authorization request that is none (%s): not answered", exc)
            return
        try:
            name, permissions = await asyncio.wait_for(self._decide(request), AUTH_TIMEOUT * 0.8)
        except NatsAuthError as exc:
            log.warning("refused a connection from %s: %s", _client(request), exc)
            answer = authorization_response(
                user_nkey=user_nkey, server_id=server_id, issuer=self.keys.issuer, error=str(exc)
            )
        except Exception as exc:
            log.error("could not decide on a connection from %s: %r", _client(request), exc)
            answer = authorization_response(
                user_nkey=user_nkey,
                server_id=server_id,
                issuer=self.keys.issuer,
                error="the authorization service could not decide (see its log)",
            )
        else:
            issued = user_jwt(
                user_nkey=user_nkey,
                name=name,
                account=ACCOUNT,
                permissions=permissions,
                lifetime=self.lifetime,
                issuer=self.keys.issuer,
            )
            answer = authorization_response(
                user_nkey=user_nkey, server_id=server_id, issuer=self.keys.issuer, jwt=issued
            )
        with contextlib.suppress(Exception):
            await msg.respond(answer.encode("ascii"))

    async def _decide(self, request: dict[str, Any]) -> tuple[str, Permissions]:
        options = request.get("connect_opts") or {}
        token = str(options.get("auth_token") or "")
        signature = str(options.get("sig") or "")
        if not token and not signature:
            return "reader", reader_permissions(self.layout)
        if not token or not signature:
            raise NatsAuthError("an agent connects with its bundle (token) and its proof (sig)")
        nonce = str((request.get("client_info") or {}).get("nonce") or "")
        if not nonce:
            raise NatsAuthError(
                "the server sent no nonce (its config needs the service's nkey user)"
            )
        try:
            bundle = json.loads(token)
            agent_id = verify_bundle(bundle)
            proof = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except Exception as exc:  # (json, base64, or the bundle's own checks)
            raise NatsAuthError(f"the token is no valid agent bundle: {exc}") from None
        if not verify_nats_connect(bundle, nonce.encode("utf-8"), proof):
            raise NatsAuthError(f"the connect proof of {agent_id!r} does not verify")
        await self._bind(agent_id, bundle, _source(request))
        await self._ensure_consumer(agent_id)
        fingerprint = str(fingerprint_of(bundle))
        return f"agent:{agent_id}", agent_permissions(self.layout, agent_id, fingerprint)

    async def _ensure_consumer(self, agent_id: str) -> None:
        """The agent's consumer, made if missing (asked first: a renewal every few minutes per
        agent should cost a read, not a write)."""
        from nats.js.errors import NotFoundError

        assert self._js is not None
        try:
            await self._js.consumer_info(self.layout.stream, self.layout.consumer(agent_id))
        except NotFoundError:
            await self._js.add_consumer(self.layout.stream, consumer_config(self.layout, agent_id))

    async def _bind(self, agent_id: str, bundle: dict[str, Any], source: str) -> None:
        """Lets ``agent_id`` in only with the key its directory entry holds; binds a new id,
        within the registration budget of the connection's source address."""
        assert self._directory is not None
        current = await self._directory.get_bundle(agent_id)
        if current is None:
            now = asyncio.get_running_loop().time()
            if not self.registrations.allow(source, now):
                raise NatsAuthError(
                    f"too many new agent ids from {source} in the last minute (at most "
                    f"{self.registrations.per_source} from one address, "
                    f"{self.registrations.in_all} in all): {agent_id!r} not bound, try later"
                )
            try:
                await self._directory.bind(bundle)
            except HubError as exc:
                raise NatsAuthError(f"binding {agent_id!r}: {exc}") from None
        elif current.get("identity_key") != bundle.get("identity_key"):
            # another key gets in only with succession statements from the bound key; the
            # directory checks them again when it re-binds the id
            refusal = (
                succession_problem(agent_id, str(current.get("identity_key")), bundle)
                if "succession" in bundle
                else ""
            )
            if refusal is not None:
                raise NatsAuthError(
                    f"agent id {agent_id!r} is bound to another identity key"
                    + (f" (succession statements refused: {refusal})" if refusal else "")
                )
            try:
                await self._directory.bind(bundle)
            except HubError as exc:
                raise NatsAuthError(f"re-binding {agent_id!r}: {exc}") from None

    # -- prekey claims --------------------------------------------------------------------------

    async def _on_claim(self, msg: Any) -> None:
        requester = id_of_token(msg.subject.rsplit(".", 1)[-1])
        try:
            target = json.loads(msg.data)["agent_id"]
            if not isinstance(target, str) or requester is None:
                raise TypeError("agent_id must be a string")
            check_agent_id(target)
        except (ValueError, KeyError, TypeError) as exc:
            await _respond(msg, {"error": f"bad claim: {exc}"})
            return
        claimed = None
        now = asyncio.get_running_loop().time()
        if target != requester and self.budget.allow(requester, target, now):
            assert self._directory is not None
            try:
                claimed = await self._directory.claim_prekey(target)
            except HubError as exc:
                log.info("a prekey claim of %r failed: %s", target, exc)
        await _respond(msg, {"prekey": claimed})


async def _pong(msg: Any) -> None:
    with contextlib.suppress(Exception):
        await msg.respond(b"pong")


async def _respond(msg: Any, body: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await msg.respond(json.dumps(body, separators=(",", ":")).encode())


def _source(request: dict[str, Any]) -> str:
    """The address a connection comes from, as the server saw it."""
    return str((request.get("client_info") or {}).get("host") or "?")


def _client(request: dict[str, Any]) -> str:
    info = request.get("client_info") or {}
    return f"{info.get('host', '?')} (connection {info.get('id', '?')}, {info.get('name', '')!r})"
