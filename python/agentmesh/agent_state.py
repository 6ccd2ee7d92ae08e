"""What the rooms of the agent core share: the core's state and the few methods one room calls
in another. The rooms (``agent_sessions.py``, ``agent_trust.py``, ``agent_receiving.py``,
``agent_persistence.py``, ``agent_prekeys.py``, ``agent_requests.py``) derive from these
declarations, so each room's use of the shared state is type-checked;
:class:`agentmesh.agent_core._AgentCore` combines them and owns the state (set in its
``__init__``)."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .agent_requests import PendingRequests
    from .errors import CryptoError
    from .hubs import Hub
    from .keystore import KeyStore
    from .message import Message


class AgentCoreState:
    """Declarations only: the values are set by ``_AgentCore.__init__``."""

    # identity and mode
    agent_id: str
    fingerprint: str
    deniable: bool
    keypair: Any
    log: logging.Logger
    # sessions and trust (guarded by _lock, like every seal and unseal)
    _lock: threading.Lock
    _sessions: dict[str, Any]
    _pins: dict[str, str]
    _bundles: dict[str, dict[str, Any]]
    _pending_identity: dict[str, dict[str, Any]]
    _unverified: set[str]
    _next_recheck: float  # monotonic s: when every live session's peer is looked up again
    _inbound_only: collections.OrderedDict[str, None]
    # the key last moved to the end of _inbound_only, or None: it is still last or gone (each
    # other change that adds a key or reorders them sets None), so a run of messages from one
    # sender moves it once
    _inbound_last: str | None
    # sessions with a peer's or this agent's previous identity key, kept (in memory only) to
    # open what was sealed before a succession; never used to seal
    _retired: dict[str, Any]
    _retired_keypair: Any  # this agent's previous identity after rotate_identity (or None)
    _retired_until: int  # ms: when the retired sessions and identity are dropped
    _retired_exports: dict[str, bytes]  # the retired sessions' sealed exports, as last saved
    _unhandled: collections.Counter[str]  # peer -> messages unsealed, handlers not run yet
    _holders: list[None]  # one entry per receive_batch(dispatch=False) running
    # handlers and counters
    # what runs the handlers (the sync core's run_handlers, or the asyncio face's delivery);
    # messages reach it through ``_dispatch`` (agent_groups.py), which keeps control messages
    # from the handlers
    _user_dispatch: Callable[[Message], Any]
    _pending: PendingRequests
    _interceptors: dict[str, Callable[[Message], None]]
    _error_handlers: tuple[Callable[[BaseException], Any], ...]
    sent: int
    received: int
    rejected: int
    closed: bool
    hub: Hub | None
    _transport: Any
    # persistence (writes serialised by _save_lock; None/absent without keypair_path)
    store: KeyStore | None
    _save_lock: threading.Lock
    _rotation_lock: threading.Lock  # held for a whole rotate_identity()
    _released: bool
    _dirty: set[str] | None
    _meta_dirty: bool
    _exports: dict[str, bytes]
    _identity_revision: int
    _delivered: dict[bytes, int]
    _signed_prekey_since: int
    _signed_prekey_id: int | None
    _autosave: bool
    _next_save: float

    if TYPE_CHECKING:  # what one room calls in another (defined in the rooms themselves)

        def _check_bundle(self, peer_id: str, bundle: Any) -> None: ...
        def _commit_session(self, peer_id: str, session: Any, bundle: dict[str, Any]) -> None: ...
        def _fetch_bundle(self, peer_id: str, *, claim: bool) -> dict[str, Any] | None: ...
        def _lookup_bundle(self, peer_id: str) -> dict[str, Any] | None: ...
        def _verify_before_send(self, peer_id: str) -> None: ...
        def _maybe_autosave(self) -> None: ...
        def _load_groups(self, saved: dict[str, dict[str, Any]]) -> None: ...
        def _group_exports(self) -> dict[str, dict[str, Any]]: ...
        def reject(self, exc: BaseException, envelope: Any = None) -> None: ...
        def _save_state_locked(self) -> None: ...
        def _write_identity(self) -> None: ...
        def save_state(self) -> None: ...
        def save_state_quietly(self) -> None: ...
        def _accept_first(self, env: Any, sender: str) -> Message: ...
        def accept(self, env: Any) -> Message: ...
        def _recover(
            self, env: Any, sender: str, exc: CryptoError, refused_by: Any
        ) -> Message | BaseException: ...
        def _open_retired(self, env: Any, sender: str) -> Message | CryptoError: ...
        def _open_for_retired_identity(
            self, env: Any, sender: str, bundle: dict[str, Any]
        ) -> Message | None: ...
        def flush(self, timeout: float | None = None) -> None: ...
        def seal_for(self, peer_id: str, payload: dict[str, Any]) -> Any: ...
        def send_payload(self, recipient: str, payload: dict[str, Any]) -> Any: ...
        def transmit(self, env: Any, expires_ms: int = 0) -> None: ...
        def report(self, exc: BaseException) -> None: ...
        def hand_over(self, msg: Message) -> None: ...
        def _dispatch(self, msg: Message) -> None: ...
