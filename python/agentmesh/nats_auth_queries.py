"""What the authorization service answers so that agents need no broader reading rights.

An agent must not read the inbox stream's information (asked with a subjects filter, it counts
the envelopes queued per inbox subject, and an inbox subject names recipient and sender) nor
another agent's consumer's (its counters and times tell that agent's traffic). What agents do
need from them, the service answers:

* ``<prefix>.svc.stream``: the inbox stream's settings and totals (the answer of
  ``$JS.API.STREAM.INFO`` asked without a filter, its per-subject parts removed);
* ``<prefix>.svc.presence``, ``{"agent_id": ID}``: ``{"online": true|false}``, whether the
  agent has a fetch waiting at its consumer now (what ``NatsHub.is_online`` means).

The client side is here too (:func:`stream_info`, :func:`is_online`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from ._native import check_agent_id
from .errors import HubError
from .nats_layout import NatsLayout

__all__ = ["answer_presence", "answer_stream", "is_online", "stream_info"]

#: Parts of a stream's state that name subjects (or positions of deleted messages).
_PER_SUBJECT = ("subjects", "deleted", "lost")


async def answer_stream(nc: Any, layout: NatsLayout, msg: Any, timeout: float) -> None:
    try:
        answer = await nc.request(f"$JS.API.STREAM.INFO.{layout.stream}", b"", timeout=timeout)
        info = json.loads(answer.data)
        state = info.get("state") if isinstance(info, dict) else None
        if isinstance(state, dict):
            for part in _PER_SUBJECT:
                state.pop(part, None)
        body = info
    except Exception as exc:
        body = {"error": {"code": 503, "description": f"the service could not ask: {exc}"}}
    with contextlib.suppress(Exception):
        await msg.respond(json.dumps(body, separators=(",", ":")).encode())


async def answer_presence(js: Any, layout: NatsLayout, msg: Any) -> None:
    from nats.js.errors import NotFoundError

    body: dict[str, Any]
    try:
        agent_id = json.loads(msg.data)["agent_id"]
        if not isinstance(agent_id, str):
            raise TypeError("agent_id must be a string")
        check_agent_id(agent_id)
        try:
            info = await js.consumer_info(layout.stream, layout.consumer(agent_id))
            body = {"online": int(info.num_waiting or 0) > 0}
        except NotFoundError:
            body = {"online": False}
    except (ValueError, KeyError, TypeError) as exc:
        body = {"error": f"bad presence request: {exc}"}
    except Exception as exc:
        body = {"error": f"the service could not ask: {exc}"}
    with contextlib.suppress(Exception):
        await msg.respond(json.dumps(body, separators=(",", ":")).encode())


async def _ask(nc: Any, subject: str, body: bytes, timeout: float, what: str) -> Any:
    try:
        answer = await nc.request(subject, body, timeout=timeout)
        return json.loads(answer.data)
    except ValueError as exc:
        raise HubError(f"{what}: the authorization service's answer is unreadable") from exc
    except Exception as exc:
        raise HubError(f"{what}: no authorization service answers ({exc})") from exc


async def stream_info(nc: Any, layout: NatsLayout, timeout: float) -> Any:
    """The inbox stream's information (a nats-py ``StreamInfo``), through the service."""
    from nats.js import api

    what = f"reading stream {layout.stream}'s settings"
    body = await _ask(nc, layout.service_stream, b"", timeout, what)
    error = body.get("error") if isinstance(body, dict) else "not an object"
    if error is not None:
        raise HubError(f"{what}: {error}")
    return api.StreamInfo.from_response(body)


async def is_online(nc: Any, layout: NatsLayout, agent_id: str, timeout: float) -> bool:
    what = f"asking whether {agent_id!r} is online"
    request = json.dumps({"agent_id": agent_id}).encode()
    body = await _ask(nc, layout.service_presence, request, timeout, what)
    if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
        raise HubError(f"{what}: {body.get('error') if isinstance(body, dict) else body}")
    return bool(body["online"])
