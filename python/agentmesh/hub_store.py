"""Durable state of the network hub, as an interface: the directory (agent id -> identity key and
bundle) and the inboxes (envelopes kept until their recipient acknowledges them).

The server talks to one :class:`HubBackend` (a :class:`Directory` plus an :class:`Inbox`) and
to nothing else, so another store can replace the SQLite one (``hub_store_sqlite/``,
:class:`SQLiteBackend`) without touching the server's routing or the agent layer.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Defined with every other agentmesh exception; imported from here as well, as always.
from agentmesh.errors import StoreError

__all__ = [  # (and SQLiteBackend: see __getattr__)
    "SEQ_BLOCK",
    "BindResult",
    "Directory",
    "HubBackend",
    "Inbox",
    "StoreError",
    "StoreState",
    "default_store_path",
]

log = logging.getLogger("agentmesh.hub")

#: Sequence numbers are reserved durably in blocks of this size (see ``next_seq``).
SEQ_BLOCK = 1 << 20

SCHEMA_VERSION = 2  # 2: inbox.expires_at (a version-1 store is migrated when opened)


@dataclass
class StoreState:
    """What the server needs from the store at start-up."""

    hub_id: bytes
    agents: set[str]
    #: recipient -> (queued envelopes, queued bytes)
    queues: dict[str, tuple[int, int]]
    message_count: int
    #: recipient -> the earliest expiry (ms since the epoch) among its queued envelopes, for
    #: those with any envelope that carries one
    expiries: dict[str, int] = field(default_factory=dict)


@dataclass
class BindResult:
    """Outcome of :meth:`Directory.bind_agent`."""

    ok: bool
    #: Highest client sequence number committed for this agent's client session (0 when the
    #: session is new to the hub): the client forgets its unacknowledged sends up to it.
    acked_seq: int = 0
    created: bool = False


def default_store_path(host: str, port: int) -> Path:
    """Where ``NetworkHubServer(store_path=None)`` keeps its store for a fixed port.

    ``$AGENTMESH_HUB_DIR`` if set, else the platform's per-user data directory
    (``$XDG_DATA_HOME`` or ``~/.local/share`` on Linux, ``~/Library/Application Support`` on
    macOS, ``%LOCALAPPDATA%`` on Windows) under ``agentmesh/``, file
    ``hub-<host>-<port>.sqlite3``.
    """
    env = os.environ.get("AGENTMESH_HUB_DIR")
    if env:
        base = Path(env)
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "agentmesh"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support" / "agentmesh"
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".local" / "share") / "agentmesh"
    safe_host = "".join(c if c.isalnum() or c in ".-" else "_" for c in host) or "any"
    return base / f"hub-{safe_host}-{port}.sqlite3"


# --------------------------------------------------------------------------------------------
# The interface


class Directory(ABC):
    """Agent id -> identity key and public bundle. An id stays bound to its first key, unless
    that key signed its succession (``rebind_agent``)."""

    @abstractmethod
    async def bind_agent(
        self, agent_id: str, identity_key: str, bundle: dict[str, Any], session: bytes
    ) -> BindResult:
        """Bind ``agent_id`` to ``identity_key`` if it is new, or update its bundle if it is
        bound to the same key; refuse (``ok=False``) when it is bound to another key. Durable
        when it returns, and ordered after every envelope submitted before it (so
        ``acked_seq`` covers every send already accepted from this client session)."""

    @abstractmethod
    async def rebind_agent(
        self, agent_id: str, old_key: str, new_key: str, bundle: dict[str, Any]
    ) -> bool:
        """Move ``agent_id`` from ``old_key`` to ``new_key`` (the caller checked the bundle's
        succession statements: signed by ``old_key``) and store ``bundle``; the one-time
        prekeys of the old key go. False, changing nothing, when the id is not bound to
        ``old_key`` any more. Durable when it returns."""

    @abstractmethod
    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def list_agents(self) -> list[str]: ...

    # One-time prekeys: public X25519 keys an agent uploads, each handed out once.

    @abstractmethod
    def prekey_count(self, agent_id: str) -> int:
        """How many one-time prekeys the store holds for ``agent_id``."""

    @abstractmethod
    async def add_prekeys(self, agent_id: str, keys: list[tuple[int, str]], limit: int) -> int:
        """Store ``(id, base64 public key)`` pairs for ``agent_id`` (ids already held are
        ignored, and at most ``limit`` are held); durable when it returns. Returns the count."""

    @abstractmethod
    async def claim_prekey(self, agent_id: str) -> tuple[int, str] | None:
        """Remove and return the oldest one-time prekey of ``agent_id`` (``None`` when there is
        none). The removal is durable before it returns, so no key is ever handed out twice,
        also across a crash."""


class Inbox(ABC):
    """Envelopes per recipient, kept in sequence order until acknowledged.

    ``put``/``ack``/``note_progress`` return at once and take effect in the next commit;
    :attr:`on_commit` is called in the event loop with the tokens of every ``put`` that the
    commit made durable (in submission order).
    """

    #: Called as ``on_commit(tokens)`` after each commit, in the event loop thread.
    on_commit: Callable[[list[Any]], None]
    #: Called with the exception when the store fails for good (the hub must stop).
    on_fatal: Callable[[BaseException], None]

    @abstractmethod
    def peek_next_seq(self) -> int:
        """The number ``next_seq`` would allocate now: every delivery id handed out so far is
        below it (a client that remembers a higher one from this store was given it by a store
        that has since been rolled back, or by someone else)."""

    @abstractmethod
    def next_seq(self) -> tuple[int, bool]:
        """Allocate the next hub sequence number (strictly increasing, never reused, also not
        after a crash). The flag says whether the number is already durably reserved, so the
        envelope may be delivered before its own commit."""

    @abstractmethod
    def put(
        self, recipient: str, seq: int, envelope: bytes, token: Any, expires_ms: int = 0
    ) -> None:
        """Store ``envelope`` for ``recipient`` under ``seq`` with the next commit.
        ``expires_ms`` (ms since the epoch; 0: never): when the sender's expiry passes, the
        hub drops it instead of delivering it (it is kept, and returned by ``fetch``, until
        then)."""

    @abstractmethod
    def put_many(self, rows: list[tuple[int, str, bytes]], token: Any) -> None:
        """``(seq, recipient, envelope)`` rows of one fan-out, made durable in one commit (all
        or none) and reported with one ``token``."""

    @abstractmethod
    def ack(self, recipient: str, seq: int) -> None:
        """The recipient acknowledged ``seq``: delete it (or never write it, if its insert has
        not started committing yet)."""

    def ack_many(self, recipient: str, seqs: list[int]) -> None:
        """:meth:`ack` for each of ``seqs`` (one DELIVERY_ACK frame's worth); a store may do
        it in one step."""
        for seq in seqs:
            self.ack(recipient, seq)

    @abstractmethod
    def note_progress(self, agent_id: str, session: bytes, client_seq: int) -> None:
        """Record, with the next commit, the highest client sequence number accepted from this
        agent's client session (see :attr:`BindResult.acked_seq`)."""

    @abstractmethod
    async def fetch(
        self, recipient: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes, int]]:
        """Committed, unacknowledged envelopes of ``recipient`` with seq > ``after_seq``:
        ``(seq, envelope, expires_ms)`` (0: no expiry)."""

    @abstractmethod
    async def barrier(self) -> None:
        """Return once everything submitted so far is committed."""

    @property
    @abstractmethod
    def message_count(self) -> int:
        """Envelopes accepted since the store was created (persisted)."""

    def purge_expired(
        self,
        recipient: str,
        now_ms: int,
        limit: int,
        done: Callable[[list[tuple[int, int]], int], None],
    ) -> None:
        """Delete, with the next commit and after everything submitted before, up to ``limit``
        envelopes of ``recipient`` whose expiry is set and at or before ``now_ms``. Right after
        that commit, in the event loop, call ``done(removed, next_expiry)``: ``removed`` the
        ``(seq, size)`` of the envelopes deleted that no :meth:`ack` had taken before (those the
        caller has not counted out yet), ``next_expiry`` the earliest expiry still stored for
        ``recipient`` (0: none). A store that cannot purge says it removed nothing and knows of
        no expiry."""
        done([], 0)

    async def oldest_enqueued(self, recipients: list[str]) -> dict[str, int]:
        """Per recipient of ``recipients`` with stored envelopes: when (ms since the epoch) the
        oldest one still queued was committed, for the hub's queue-age metric. A store that
        does not know says nothing (an empty dict)."""
        return {}


class HubBackend(Directory, Inbox):
    """Directory + inbox behind one object; the server needs nothing else."""

    @abstractmethod
    async def open(self) -> StoreState: ...

    @abstractmethod
    async def close(self) -> None:
        """Commit what is pending and release the store."""

    @property
    def description(self) -> str:
        return type(self).__name__

    def commit_stats(self) -> tuple[int, float]:
        """(commits so far, seconds they took in all): the store's durability cost, for the
        hub's metrics. A store that does not measure it says (0, 0.0)."""
        return 0, 0.0


# --------------------------------------------------------------------------------------------
# SQLite implementation


def ephemeral_store_path() -> Path:
    """A fresh private directory and file for a store that is removed on clean stop."""
    return Path(tempfile.mkdtemp(prefix="agentmesh-hub-")) / "hub.sqlite3"


def __getattr__(name: str) -> Any:
    # (the SQLite store lives in hub_store_sqlite/; this import path keeps working)
    if name == "SQLiteBackend":
        from .hub_store_sqlite import SQLiteBackend

        return SQLiteBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
