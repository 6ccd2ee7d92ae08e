"""Requests (the REQUEST frame): lookups, bundle claims and updates, prekey uploads, listings,
and the directory policy behind them.

:class:`Directory` (one per hub) is the policy that outlives connections: the sorted listing,
served in bounded pages that are encoded once and reused, and the per-minute budgets of
one-time prekey claims (per requesting id and per target). :class:`RequestHandler` (one per
connection) answers one connection's requests: LIST_AGENTS, MESSAGE_COUNT and IS_ONLINE from
memory at once, the others in a task each, at most ``max_pending_requests`` at a time.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from agentmesh.hub.limits import HubLimits
from agentmesh.hub.registration import older_bundle
from agentmesh.hub_protocol import (
    UNKNOWN_OP,
    ErrorCode,
    Op,
    decode_request,
    encode_response,
)
from agentmesh.prekey_upload import parse_prekeys

if TYPE_CHECKING:
    from agentmesh.hub.connection import Connection

__all__ = ["AGENT_OPS", "Directory", "RequestHandler"]

log = logging.getLogger("agentmesh.hub")

#: Requests only a registered agent connection may make.
AGENT_OPS = frozenset((Op.CLAIM_BUNDLE, Op.ADD_PREKEYS, Op.UPDATE_BUNDLE))


def _last_minute(
    claims: dict[str, deque[tuple[float, str]]], key: str, now: float
) -> deque[tuple[float, str]]:
    q = claims.get(key)
    if q is None:
        q = claims[key] = deque()
    while q and now - q[0][0] >= 60.0:
        q.popleft()
    return q


class Directory:
    """The listing of known ids and the one-time prekey claim budgets."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limits: HubLimits, ids: Iterable[str]
    ) -> None:
        self.loop = loop
        self.limits = limits
        # LIST_AGENTS: ids in order, and encoded pages (by the cursor they start after) reused
        # until the directory changes; a flood of requests costs one copy per answer
        self.sorted_ids = sorted(ids)
        self.list_pages: dict[str, bytes] = {}
        self.list_cursors: set[str] = set()
        # one-time prekey claims of the last minute, by requesting id (time, target) and by
        # target (time, requester): budgets that outlive connections
        self.claims_by_requester: dict[str, deque[tuple[float, str]]] = {}
        self.claims_by_target: dict[str, deque[tuple[float, str]]] = {}

    def added(self, agent_id: str) -> None:
        """A new id: into the listing, and every cached page is stale."""
        bisect.insort(self.sorted_ids, agent_id)
        self.list_pages.clear()
        self.list_cursors.clear()

    def list_page(self, after: str) -> bytes:
        """The LIST_AGENTS answer for the ids after ``after`` ("" = from the start): JSON
        ``{"agents": [...], "next": cursor or null}``, at most ``max_list_agents`` ids and
        well inside one frame. Pages that start where an earlier page ended are cached."""
        page = self.list_pages.get(after)
        if page is not None:
            return page
        ids = self.sorted_ids
        start = bisect.bisect_right(ids, after) if after else 0
        budget = self.limits.max_frame_size - 4096  # room for the header and "next"
        chosen: list[str] = []
        size = 0
        for agent_id in itertools.islice(ids, start, start + self.limits.max_list_agents):
            size += len(json.dumps(agent_id)) + 1
            if size > budget and chosen:
                break
            chosen.append(agent_id)
        nxt = chosen[-1] if chosen and start + len(chosen) < len(ids) else None
        page = json.dumps({"agents": chosen, "next": nxt}, separators=(",", ":")).encode()
        # only cursors this hub handed out are cached: any other string costs one page build
        # (bounded) and no memory
        if not after or after in self.list_cursors:
            self.list_pages[after] = page
        if nxt is not None:
            self.list_cursors.add(nxt)
        return page

    def may_claim(self, requester: str, target: str) -> bool:
        """Whether ``requester`` gets one of ``target``'s one-time prekeys now: one per peer and
        at most ``max_prekey_claims_per_minute`` per requesting id, at most
        ``max_prekey_claims_per_target_per_minute`` out of one target's stock. Registration is
        open, so this slows a determined drain rather than preventing it (docs/hub.md)."""
        now = self.loop.time()
        mine = _last_minute(self.claims_by_requester, requester, now)
        theirs = _last_minute(self.claims_by_target, target, now)
        lim = self.limits
        if (
            len(mine) >= lim.max_prekey_claims_per_minute
            or len(theirs) >= lim.max_prekey_claims_per_target_per_minute
            or any(peer == target for _t, peer in mine)
        ):
            return False
        mine.append((now, target))
        theirs.append((now, requester))
        return True

    def forget_old_claims(self, now: float) -> None:
        for claims in (self.claims_by_requester, self.claims_by_target):
            for key in [k for k, q in claims.items() if not q or now - q[-1][0] >= 60.0]:
                del claims[key]


class RequestHandler:
    """Answers the REQUEST frames of one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.hub = conn.hub
        self.limits = conn.limits
        self.pending = 0

    def on_request(self, body: bytes) -> None:
        rid, op, arg = decode_request(body)
        conn, hub = self.conn, self.hub
        # Answered from memory at once: no task, no store read, no per-request encoding.
        if op == Op.LIST_AGENTS:
            conn.write(encode_response(rid, 0, hub.directory.list_page(arg)))
            return
        if op == Op.MESSAGE_COUNT:
            conn.write(encode_response(rid, 0, b"%d" % hub.store.message_count))
            return
        if op == Op.IS_ONLINE:
            ast = hub.agents.get(arg)
            online = ast is not None and ast.conn is not None
            conn.write(encode_response(rid, 0, b"true" if online else b"false"))
            return
        if self.pending >= self.limits.max_pending_requests:
            conn.write(encode_response(rid, ErrorCode.BAD_REQUEST, b"too many concurrent requests"))
            return
        self.pending += 1
        conn.loop.create_task(self._answer(rid, op, arg))

    async def _answer(self, rid: int, op: int, arg: str) -> None:
        conn, hub = self.conn, self.hub
        try:
            result: Any
            if op == Op.GET_BUNDLE:
                result = await hub.store.get_bundle(arg) if arg in hub.agents else None
            elif op in AGENT_OPS and conn.agent_id is None:
                conn.write(
                    encode_response(
                        rid, ErrorCode.NOT_AUTHENTICATED, b"only a registered agent may do this"
                    )
                )
                return
            elif op == Op.CLAIM_BUNDLE:
                result = await self._claim_bundle(arg)
            elif op == Op.UPDATE_BUNDLE:
                problem = await self._update_bundle(arg)
                if problem is not None:
                    conn.write(encode_response(rid, ErrorCode.BAD_REQUEST, problem.encode()))
                    return
                result = True
            elif op == Op.ADD_PREKEYS:
                try:
                    keys = parse_prekeys(arg)
                except ValueError as exc:
                    conn.write(encode_response(rid, ErrorCode.BAD_REQUEST, str(exc).encode()))
                    return
                assert conn.agent_id is not None
                limit = self.limits.max_prekeys_per_agent
                held = await hub.store.add_prekeys(conn.agent_id, keys, limit)
                result = {"held": held, "limit": limit}
            else:
                conn.write(
                    encode_response(rid, ErrorCode.BAD_REQUEST, f"{UNKNOWN_OP} {op}".encode())
                )
                return
            conn.write(encode_response(rid, 0, json.dumps(result, separators=(",", ":")).encode()))
        except Exception as exc:
            log.exception("request %d failed", op)
            conn.write(encode_response(rid, ErrorCode.INTERNAL, str(exc).encode()))
        finally:
            self.pending -= 1

    async def _update_bundle(self, arg: str) -> str | None:
        """Store the caller's new bundle; returns what is wrong with it, if anything."""
        conn, store = self.conn, self.hub.store
        crypto = self.hub.crypto
        try:
            bundle = json.loads(arg)
            if not isinstance(bundle, dict) or crypto is None:
                raise ValueError("not a bundle object")
            agent_id = crypto.verify_bundle(bundle)
        except Exception as exc:
            return f"invalid bundle: {exc}"
        identity_key = bundle.get("identity_key")
        if agent_id != conn.agent_id or not isinstance(identity_key, str):
            return "the bundle is not this agent's"
        bundle.pop("one_time_prekey", None)
        assert conn.agent_id is not None
        problem = older_bundle(await store.get_bundle(conn.agent_id), bundle)
        if problem is not None:
            return problem
        result = await store.bind_agent(conn.agent_id, identity_key, bundle, conn.session)
        if not result.ok:
            return "the bundle has another identity key than the one this id is bound to"
        log.info("agent %r published a new bundle", conn.agent_id)
        return None

    async def _claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        conn, hub = self.conn, self.hub
        store = hub.store
        if agent_id not in hub.agents:
            return None
        bundle = await store.get_bundle(agent_id)
        if (
            bundle is None
            or conn.agent_id is None
            or agent_id == conn.agent_id
            or not hub.directory.may_claim(conn.agent_id, agent_id)
        ):
            return bundle
        claimed = await store.claim_prekey(agent_id)
        if claimed is not None:
            bundle["one_time_prekey"] = {"id": claimed[0], "key": claimed[1]}
            log.debug(
                "handed out one-time prekey %d of %r to %r", claimed[0], agent_id, conn.agent_id
            )
        return bundle
