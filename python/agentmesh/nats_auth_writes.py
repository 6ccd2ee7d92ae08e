"""Agents' own directory writes, made by the authorization service: bundles and prekeys.

Behind the service an agent may not write the directory's KV keys itself. A connection keeps
its user, and with it its permissions, until the user expires (minutes), also after its agent
moved to a new identity key; a thief holding the old key and connected before the rotation
could then write the id over to a key of his own, for every agent that has not pinned it yet.
So the agent asks the service, on ``<prefix>.svc.write.<kind>.<agent token>.<key token>``: a
subject only a connection that proved that identity key may publish to (its permissions name
it, :mod:`agentmesh.nats_auth_permissions`). The service:

* refuses a key the directory does not bind (one rotated away from);
* writes a bundle by the directory's own rules (:meth:`NatsDirectory.bind`: the first key
  wins, newer bundles of the bound key replace older ones, another key only with succession
  statements from the bound key);
* adds one-time prekeys, then reads the binding again: a rotation in between drops the old
  key's stock before it re-binds the id, so prekeys that landed after that drop for a key
  rotated away are dropped again (never handed out for the new key).

An answer is ``{"held": n}`` (prekeys), ``{"ok": true}`` (a bundle) or ``{"error": code,
"message": why}`` with an :class:`~agentmesh.hub_protocol.ErrorCode`. The client side is
:func:`write_bundle` and :func:`write_prekeys`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from ._native import fingerprint_of
from .errors import HubError, HubRequestError
from .hub_protocol import ErrorCode
from .nats_directory import NatsDirectory
from .nats_layout import NatsLayout, id_of_token, key_token

__all__ = ["answer_write", "write_bundle", "write_prekeys"]

log = logging.getLogger("agentmesh.nats.auth")


async def answer_write(directory: NatsDirectory, msg: Any) -> None:
    """Carries out one agent's write request (see the module) and answers it."""
    body: dict[str, Any]
    try:
        body = await _write(directory, msg.subject, msg.data)
    except HubRequestError as exc:
        body = {"error": int(exc.code), "message": str(exc)}
    except HubError as exc:
        body = {"error": int(ErrorCode.INTERNAL), "message": f"the directory: {exc}"}
    with contextlib.suppress(Exception):
        await msg.respond(json.dumps(body, separators=(",", ":")).encode())


def _refused(why: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> HubRequestError:
    return HubRequestError(code, why)


async def _write(directory: NatsDirectory, subject: str, data: bytes) -> dict[str, Any]:
    kind, agent_token, key = subject.rsplit(".", 3)[-3:]
    agent_id = id_of_token(agent_token)
    if agent_id is None:
        raise _refused(f"no agent token in {subject!r}")
    try:
        request = json.loads(data)
    except ValueError:
        raise _refused("the request is not JSON") from None
    if not isinstance(request, dict):
        raise _refused("the request is not a JSON object")
    await _require_bound(directory, agent_id, key)
    if kind == "bundle":
        bundle = request.get("bundle")
        if not isinstance(bundle, dict) or bundle.get("agent_id") != agent_id:
            raise _refused(f"the request holds no bundle of {agent_id!r}")
        await directory.bind(bundle)
        return {"ok": True}
    if kind == "prekeys":
        prekeys = request.get("prekeys")
        if not isinstance(prekeys, list):
            raise _refused("the request holds no list of prekeys")
        held = await directory.add_prekeys(agent_id, prekeys)
        try:
            await _require_bound(directory, agent_id, key)
        except HubError:  # (rotated meanwhile, or not known: dropped rather than kept unsure)
            await directory.drop_prekeys(agent_id)
            raise
        return {"held": held}
    raise _refused(f"nothing to write is called {kind!r}")


async def _require_bound(directory: NatsDirectory, agent_id: str, key: str) -> None:
    """The directory binds ``agent_id`` to the key of ``key`` (its key token)."""
    bundle = await directory.get_bundle(agent_id)
    if bundle is None:
        # (the service binds an id when its first connection comes in: a directory that lost
        # the entry since was restored from an older state; the agent registers again)
        raise _refused(f"agent id {agent_id!r} is not bound", ErrorCode.PEER_NOT_FOUND)
    if key_token(str(fingerprint_of(bundle))) != key:
        log.warning("refused a directory write for %r by a key it does not bind", agent_id)
        raise _refused(
            f"agent id {agent_id!r} is bound to another identity key than the one this "
            "connection proved (rotated away from?): reconnect with the current key",
            ErrorCode.ID_TAKEN,
        )


# -- the agent's side ---------------------------------------------------------------------------


async def _ask(
    nc: Any, layout: NatsLayout, kind: str, keypair: Any, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    agent_id = str(keypair.agent_id)
    subject = layout.write_subject(kind, agent_id, str(keypair.fingerprint))
    what = f"writing the {kind} of {agent_id!r} through the authorization service"
    # (no answer in time, or no service: nats-py's exception, for the caller to try again)
    answer = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    try:
        reply = json.loads(answer.data)
    except ValueError as exc:
        raise HubError(f"{what}: its answer is unreadable") from exc
    if not isinstance(reply, dict):
        raise HubError(f"{what}: its answer is not an object")
    if "error" in reply:
        code, message = reply.get("error"), str(reply.get("message") or "refused")
        try:
            refusal = ErrorCode(int(code))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            refusal = ErrorCode.INTERNAL
        if refusal == ErrorCode.INTERNAL:
            raise HubError(f"{what}: {message}")
        raise HubRequestError(refusal, message)
    return reply


async def write_bundle(
    nc: Any, layout: NatsLayout, keypair: Any, bundle: dict[str, Any], timeout: float
) -> None:
    """Publishes ``bundle`` (``keypair``'s) through the service (HubRequestError if refused)."""
    await _ask(nc, layout, "bundle", keypair, {"bundle": bundle}, timeout)


async def write_prekeys(
    nc: Any, layout: NatsLayout, keypair: Any, prekeys: list[dict[str, Any]], timeout: float
) -> int:
    """Adds ``keypair``'s one-time prekeys through the service; how many it holds now."""
    reply = await _ask(nc, layout, "prekeys", keypair, {"prekeys": list(prekeys)}, timeout)
    held = reply.get("held")
    if not isinstance(held, int):
        raise HubError(f"the service's answer to a prekey upload holds no count: {reply}")
    return held
