"""What ``flush`` waits on, for every backend that numbers its sends: futures that complete once
every send up to a number has settled (accepted, or refused and reported), or fail with the
error that stopped the backend. The network hub's client (``hub_client/send_window.py``) and
the NATS sender (``nats_sender.py``) both keep one."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["FlushWaiters"]


class FlushWaiters:
    """Flushes waiting for sends numbered up to their target to settle (one event loop)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    async def wait(
        self, loop: asyncio.AbstractEventLoop, target: int, timeout: float | None
    ) -> None:
        """Return once :meth:`settled` says everything up to ``target`` has; ``TimeoutError``
        after ``timeout`` seconds; the error of :meth:`fail` if the backend stops."""
        fut: asyncio.Future[None] = loop.create_future()
        entry = (target, fut)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(entry)

    @property
    def waiting(self) -> bool:
        """Whether any flush waits (if none, what has settled need not be worked out)."""
        return bool(self._waiting)

    def settled(self, first_unsettled: int | None) -> None:
        """Every send below ``first_unsettled`` (all of them: None) has settled."""
        if not self._waiting:
            return
        keep = []
        for target, fut in self._waiting:
            if first_unsettled is None or first_unsettled > target:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._waiting[:] = keep

    def fail(self, err: BaseException) -> None:
        """The backend stopped: every flush waiting raises ``err``."""
        for _target, fut in self._waiting:
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
