"""The prekey policy an agent keeps on every backend: the backend stocked with one-time
prekeys (each written to the identity file before it is handed out), and the signed prekey
rotated and published (identity file first, never past what the backend serves)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .agent_core import _AgentCore
    from .backend import Backend

log = logging.getLogger("agentmesh.link")

#: One-time prekeys: an agent tops its backend's stock up to PREKEY_TARGET when fewer than
#: PREKEY_LOW are left. It checks after registering (also after a reconnect), when a set-up
#: used one of its keys, and every PREKEY_CHECK_INTERVAL seconds (peers may claim keys and
#: never use them).
PREKEY_TARGET = 50
PREKEY_LOW = 20
PREKEY_CHECK_INTERVAL = 60.0
#: ... and at the same checks, it replaces its signed prekey once it is older than this many
#: seconds and publishes the new bundle. The one before the previous is deleted: a set-up made
#: without a one-time prekey that the agent has answered since cannot be read with files
#: stolen two periods later (docs/security.md: a session never answered keeps the key).
SIGNED_PREKEY_ROTATION = 7 * 24 * 3600.0


class PrekeyMaintenance:
    """Runs the prekey policy for one agent on its backend's event loop.
    ``between_batches(work, *args)`` runs ``work`` while no received batch is being handled
    (anything that changes the identity's keys goes through it)."""

    def __init__(
        self,
        core: _AgentCore,
        backend: Backend,
        between_batches: Callable[..., Any],
    ) -> None:
        self.core = core
        self.backend = backend
        self._between_batches = between_batches
        self._task: asyncio.Task[None] | None = None
        self._check: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bundle_unpublished = False  # a rotated signed prekey the backend has not got yet
        self._identity_unsaved = False  # a rotation whose identity file write failed

    def start(self) -> None:
        """After the first registration (on the backend's loop)."""
        self._loop = asyncio.get_running_loop()
        self._check = asyncio.Event()
        self.backend.on_registered = self._on_registered
        self._task = self._loop.create_task(self._run())

    def check_soon(self) -> None:
        """From any thread: a set-up used one of the keys, check the stock now."""
        if self._check is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
                self._loop.call_soon_threadsafe(self._check.set)

    def stop(self) -> None:
        """On the backend's loop."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        """Each part fails on its own: a backend that lacks one request still gets the other."""
        check = self._check
        assert check is not None
        stock = rotate = True
        while stock or rotate:
            if stock:
                stock = await self._attempt("top up its one-time prekeys", self._top_up)
            if rotate:
                rotate = await self._attempt("publish a new signed prekey", self._rotate_if_due)
            check.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(check.wait(), PREKEY_CHECK_INTERVAL)

    async def _attempt(self, what: str, step: Callable[[], Awaitable[None]]) -> bool:
        """Run one step; False when the backend does not know the request (an older hub: no
        use asking again), True otherwise (a failure is logged and retried later)."""
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if getattr(exc, "unknown_request", False):
                log.info("agent %r: the hub cannot %s (%s)", self.core.agent_id, what, exc)
                return False
            if self.core.closed:  # (closing raced the step: nothing to tell the user)
                log.debug("agent %r: did not %s: closed meanwhile", self.core.agent_id, what)
                return False
            log.warning("agent %r: could not %s: %s", self.core.agent_id, what, exc)
        return True

    async def _top_up(self) -> None:
        backend = self.backend
        held = await backend.add_prekeys([])
        target = min(PREKEY_TARGET, backend.prekey_limit or PREKEY_TARGET)
        if held >= min(PREKEY_LOW, max(1, target // 2)):  # (a low limit lowers both)
            return
        loop = asyncio.get_running_loop()
        # (writing the identity file can take an Argon2 run: not on this loop)
        fresh = await loop.run_in_executor(
            None, self._between_batches, self.core.new_prekeys, held, target - held
        )
        held = await backend.add_prekeys(fresh)
        log.debug("agent %r: the hub holds %d of its one-time prekeys", self.core.agent_id, held)

    async def _rotate_if_due(self) -> None:
        loop = asyncio.get_running_loop()
        if self._identity_unsaved:  # a rotation whose identity write failed: write it first
            await loop.run_in_executor(None, self._between_batches, self.core.save_identity)
            self._identity_unsaved = False
            self._bundle_unpublished = True
        # Never rotate past what the backend serves: the core keeps one previous signed
        # prekey, so a second rotation before the first was published would delete the
        # served one.
        elif not self._bundle_unpublished and self.core.signed_prekey_due(SIGNED_PREKEY_ROTATION):
            try:
                await loop.run_in_executor(
                    None, self._between_batches, self.core.rotate_signed_prekey
                )
            except Exception:
                self._identity_unsaved = True
                raise
            self._bundle_unpublished = True
        if self._bundle_unpublished:  # (until the backend has it: retried at every check)
            await self.backend.update_bundle(self.core.public_bundle)
            self._bundle_unpublished = False
            log.info("agent %r: new signed prekey published", self.core.agent_id)

    def _on_registered(self) -> None:
        """After every (re)registration: the backend got the keypair's current bundle."""
        self._bundle_unpublished = False
        if self._check is not None:
            self._check.set()  # a reconnect checks the stock at once
