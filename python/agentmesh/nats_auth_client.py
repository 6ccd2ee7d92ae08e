"""The client side of the agentmesh NATS authorization service (``NatsHub(..., auth=True)``).

* :func:`agent_options`: what an agent's connection sends in CONNECT: its bundle as the token
  and, as the signature, its identity key's NATS connect proof over the server's nonce (made
  anew on every reconnect, as each connection has its own nonce); replies under its own prefix.
* :func:`reader_options`: a lookup connection sends nothing and is let in as a reader.
* :class:`Renewal`: the service's users expire (minutes), and nats-server closes a connection
  whose user expired; nats-py then gives up on it. So each connection reconnects by itself
  (a new nonce, a new proof, a new user) once three quarters of its user's life have passed,
  if a service answers then; if none does, it keeps its user (and carries on) until it
  expires, and then keeps reconnecting until a service is back (nats_connection's client does
  not give up on a dropped user as nats-py's does).
* :func:`claim_prekey`: another agent's one-time prekey, claimed through the service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from .nats_auth_permissions import READER_REPLY_PREFIX
from .nats_layout import NatsLayout

__all__ = ["Renewal", "agent_options", "claim_prekey", "reader_options"]

log = logging.getLogger("agentmesh.nats")

#: Seconds between two tries to learn a connection's expiry, or to find a service.
_RETRY = 1.0
#: Longest bundle token sent (bytes of JSON): with the proof and the other CONNECT fields it
#: stays within nats-server's default control line of 4 KiB.
_MAX_TOKEN = 3000


def agent_options(layout: NatsLayout, keypair: Any) -> dict[str, Any]:
    agent_id = str(keypair.agent_id)

    def proof(nonce: str) -> bytes:
        signature = keypair.sign_nats_connect(nonce.encode("utf-8"))
        return base64.urlsafe_b64encode(signature).rstrip(b"=")

    def bundle() -> str:
        published = keypair.public_bundle()
        text = json.dumps(published, separators=(",", ":"), sort_keys=True)
        # the token travels in CONNECT, a control line (4 KiB by default on nats-server):
        # succession statements beyond what fits go, oldest first (a service whose binding is
        # older than the ones kept refuses the key, as if it had none)
        while len(text) > _MAX_TOKEN and published.get("succession"):
            published["succession"] = published["succession"][1:] or None
            if published["succession"] is None:
                del published["succession"]
            text = json.dumps(published, separators=(",", ":"), sort_keys=True)
        return text

    return {
        "signature_cb": proof,
        "token": bundle,
        "inbox_prefix": layout.reply_prefix(agent_id),
    }


def reader_options() -> dict[str, Any]:
    return {"inbox_prefix": READER_REPLY_PREFIX}


class Renewal:
    """Keeps one connection's user from expiring (see the module's doc)."""

    def __init__(self, nc: Any, what: str, ping_subject: str) -> None:
        self.nc = nc
        self.ping_subject = ping_subject
        self.what = what
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _remaining(self) -> float:
        answer = await self.nc.request("$SYS.REQ.USER.INFO", b"", timeout=5.0)
        expires = json.loads(answer.data).get("data", {}).get("expires")
        return float(expires) / 1e9 if expires else 0.0

    async def _service_answers(self) -> bool:
        try:
            await self.nc.request(self.ping_subject, b"", timeout=_RETRY)
        except Exception:
            return False
        return True

    async def _run(self) -> None:
        while not self.nc.is_closed:
            try:
                remaining = await self._remaining()
            except Exception as exc:
                log.debug("%s: cannot learn when its user expires (%s)", self.what, exc)
                await asyncio.sleep(_RETRY)
                continue
            if remaining <= 0:
                return  # a user without an expiry (no authorization service)
            loop = asyncio.get_running_loop()
            expires_at = loop.time() + remaining
            await asyncio.sleep(max(remaining * 0.75, 0.5))
            while loop.time() < expires_at:
                if await self._service_answers():
                    log.info("%s: renewing its user before it expires", self.what)
                    with contextlib.suppress(Exception):
                        await self.nc.force_reconnect()
                    self.renewals += 1
                    break
                log.warning("%s: no authorization service answers to renew its user", self.what)
                await asyncio.sleep(_RETRY)
            await asyncio.sleep(_RETRY / 4)  # (the expiry, or the renewal, under way)
            while not self.nc.is_connected and not self.nc.is_closed:
                await asyncio.sleep(0.05)


async def claim_prekey(
    nc: Any, layout: NatsLayout, requester: str, target: str, timeout: float
) -> dict[str, Any] | None:
    """One of ``target``'s one-time prekeys, removed by the service for ``requester``; None
    when none is left, the budget is spent, or the service does not answer (a session then
    starts without one, as on every hub)."""
    body = json.dumps({"agent_id": target}).encode()
    try:
        answer = await nc.request(layout.claim_subject(requester), body, timeout=timeout)
        found = json.loads(answer.data).get("prekey")
    except Exception as exc:
        log.info("claiming a prekey of %r through the service failed: %s", target, exc)
        return None
    return found if isinstance(found, dict) else None
