"""The requests of a HubClient waiting for the hub's answer (lookups, claims, prekey uploads).

Each request gets an id; its frame is kept until the answer comes (or the wait times out) and
is written again on every new connection meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agentmesh.errors import HubError
from agentmesh.hub_client.connection import Connection
from agentmesh.hub_protocol import Op, encode_request, error_for_code

__all__ = ["RequestTable"]


class RequestTable:
    """Requests sent to the hub and not answered yet, by request id."""

    def __init__(self) -> None:
        self._requests: dict[int, tuple[asyncio.Future[Any], bytes]] = {}
        self._next_rid = 0

    async def ask(
        self,
        op: Op,
        arg: str,
        loop: asyncio.AbstractEventLoop,
        conn: Connection | None,
        timeout: float,
        hub: str,
    ) -> Any:
        """Sends one request (on ``conn`` if it is open, else on the next connection) and
        returns the hub's answer (decoded JSON); raises the hub's refusal or, after
        ``timeout`` seconds, :class:`HubError` naming ``hub``."""
        self._next_rid = (self._next_rid + 1) & 0xFFFFFFFF
        rid = self._next_rid
        frame = encode_request(rid, op, arg)
        fut: asyncio.Future[Any] = loop.create_future()
        self._requests[rid] = (fut, frame)
        if conn is not None and not conn.is_closed:
            conn.write(frame)
        try:
            return await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise HubError(f"hub {hub} did not answer within {timeout}s") from None
        finally:
            self._requests.pop(rid, None)

    def on_response(self, rid: int, status: int, payload: bytes) -> None:
        entry = self._requests.get(rid)
        if entry is None or entry[0].done():
            return
        fut = entry[0]
        if status == 0:
            try:
                fut.set_result(json.loads(payload.decode("utf-8")))
            except ValueError as exc:
                fut.set_exception(HubError(f"bad answer from the hub: {exc}"))
        else:
            fut.set_exception(error_for_code(status, payload.decode("utf-8", "replace")))

    def resend(self, conn: Connection) -> None:
        """Writes every request still waiting on a new connection."""
        for _fut, frame in self._requests.values():
            conn.write(frame)

    def fail(self, err: BaseException) -> None:
        """Every request still waiting raises ``err``."""
        for fut, _frame in self._requests.values():
            if not fut.done():
                fut.set_exception(err)
