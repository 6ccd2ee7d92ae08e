"""The authorization service's budgets per minute: what one client may ask of it.

* :class:`ClaimBudget`: one-time prekey claims, per requester and per target.
* :class:`RegistrationBudget`: new agent ids bound at connection, per source address and in
  all. Any identity key may bind a new id (that is how an agent joins), so without a budget
  one client could mint ids as fast as it can make keys, each a directory entry and an inbox
  consumer (a Raft group of its own on a cluster) that stay for good.

Both keep records of what they granted in the last minute only: a refused request leaves
nothing behind, and minute-old records are swept (amortized), so what is kept stays bounded
by the grants of the last minute, whatever names or addresses are asked for.
"""

from __future__ import annotations

import collections

__all__ = ["ClaimBudget", "RegistrationBudget"]

#: The budgets' window, in seconds.
MINUTE = 60.0


def _when(record: tuple[float, str] | float) -> float:
    return record[0] if isinstance(record, tuple) else record


class ClaimBudget:
    """At most ``per_requester`` claims a minute by one agent (one per target), at most
    ``per_target`` out of one agent's stock: fresh ids cannot empty a stock faster."""

    def __init__(self, per_requester: int = 60, per_target: int = 30, sweep: int = 1024) -> None:
        self.per_requester, self.per_target = per_requester, per_target
        self._by_requester: dict[str, collections.deque[tuple[float, str]]] = {}
        self._by_target: dict[str, collections.deque[float]] = {}
        self._sweep_floor = sweep  # records kept before a sweep of minute-old ones, at least
        self._sweep_at = sweep

    def allow(self, requester: str, target: str, now: float) -> bool:
        # (a refused claim leaves nothing behind, and a minute-old record goes: what is kept
        # is bounded by the claims granted in the last minute, whatever names are asked for)
        mine = self._by_requester.pop(requester, None) or collections.deque()
        theirs = self._by_target.pop(target, None) or collections.deque()
        while mine and now - mine[0][0] >= MINUTE:
            mine.popleft()
        while theirs and now - theirs[0] >= MINUTE:
            theirs.popleft()
        granted = not (
            len(mine) >= self.per_requester
            or len(theirs) >= self.per_target
            or any(peer == target for _, peer in mine)
        )
        if granted:
            mine.append((now, target))
            theirs.append(now)
        if mine:
            self._by_requester[requester] = mine
        if theirs:
            self._by_target[target] = theirs
        if len(self._by_requester) + len(self._by_target) > self._sweep_at:
            self._sweep(now)
        return granted

    def _sweep(self, now: float) -> None:
        """Drop every record a minute old (amortized: the next sweep waits for twice as many
        records), so what is kept stays bounded by the claims of the last minute."""
        for records in (self._by_requester, self._by_target):
            for key in list(records):
                held = records[key]
                while held and now - _when(held[0]) >= MINUTE:
                    held.popleft()
                if not held:
                    del records[key]
        kept = len(self._by_requester) + len(self._by_target)
        self._sweep_at = max(self._sweep_floor, 2 * kept)


class RegistrationBudget:
    """At most ``per_source`` new agent ids a minute from one source address, at most
    ``in_all`` a minute from every source together (many addresses cannot add up to more)."""

    def __init__(self, per_source: int = 60, in_all: int = 600, sweep: int = 1024) -> None:
        if per_source < 1 or in_all < 1:
            raise ValueError(
                f"registration budgets must be at least 1 a minute, not {per_source}/{in_all}"
            )
        self.per_source, self.in_all = per_source, in_all
        self._by_source: dict[str, collections.deque[float]] = {}
        self._all: collections.deque[float] = collections.deque()
        self._sweep_floor = sweep
        self._sweep_at = sweep

    def allow(self, source: str, now: float) -> bool:
        mine = self._by_source.pop(source, None) or collections.deque()
        for held in (mine, self._all):
            while held and now - held[0] >= MINUTE:
                held.popleft()
        granted = len(mine) < self.per_source and len(self._all) < self.in_all
        if granted:
            mine.append(now)
            self._all.append(now)
        if mine:
            self._by_source[source] = mine
        if len(self._by_source) > self._sweep_at:
            for key in list(self._by_source):
                held = self._by_source[key]
                while held and now - held[0] >= MINUTE:
                    held.popleft()
                if not held:
                    del self._by_source[key]
            self._sweep_at = max(self._sweep_floor, 2 * len(self._by_source))
        return granted
