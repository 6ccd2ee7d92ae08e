"""Many agents' delivered batches unsealed in one pass.

A process hosting hundreds of agents receives a few messages per agent at a time. Unsealed
agent by agent, every small batch paid for a native call and an Ed25519 batch verification of
its own, whose fixed cost a batch of a few signatures barely spreads (about 13 µs a message
at five, against 10 at fifty). Here the signed runs of every agent in the pass go to the Rust
core in one call (``unseal_across``): one verification over all their signatures, each
session's state changed only if its own envelopes authenticate, and each run's results exactly
what ``unseal_many`` would have given it.

Everything else keeps the one-agent path of :mod:`agentmesh.agent_receiving`: first contact,
deniable sessions, group messages, an agent whose lock another thread holds right now (a send),
a session replaced meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import crypto as _crypto
from .agent_receiving import Rejected, _holding, group_by_sender
from .agent_rules import UNSEAL_MANY_MAX
from .message import Message

if TYPE_CHECKING:
    from .agent_receiving import _Receiving

__all__ = ["receive_batches_together"]

Envelope = _crypto.Envelope
_PAIRWISE_ONLY = {Envelope}

Outcomes = list["Message | Rejected | None"]


class _Run:
    """One sender's envelopes for one agent, going into the shared native call."""

    __slots__ = ("envelopes", "indexes", "job", "sender", "session")

    def __init__(
        self, job: _Job, sender: str, indexes: list[int], envelopes: list[Any], session: Any
    ) -> None:
        self.job = job
        self.sender = sender
        self.indexes = indexes
        self.envelopes = envelopes
        self.session = session

    def fill(self, results: list[Any]) -> None:
        outcomes = self.job.outcomes
        for index, result in zip(self.indexes, results, strict=True):
            outcomes[index] = result


def receive_batches_together(
    jobs: list[tuple[_Receiving, list[Any]]],
) -> list[Outcomes | BaseException]:
    """``core.receive_batch(envelopes, dispatch=False)`` for every ``(core, envelopes)`` (one
    job per agent, each agent at most once), the signed runs of all of them unsealed in one
    native call. Returns each job's outcomes, in order, or the exception that failed that
    job's part (a failure of the native call itself, which changes nothing, is raised)."""
    together = [
        j for j, (_core, envs) in enumerate(jobs) if envs and {*map(type, envs)} == _PAIRWISE_ONLY
    ]
    if len(together) < 2:
        together = []
    results: list[Outcomes | BaseException | None] = [None] * len(jobs)
    if together:
        opened = _receive_together([jobs[j] for j in together])
        for j, outcomes in zip(together, opened, strict=True):
            results[j] = outcomes
    for j, (core, envs) in enumerate(jobs):
        if results[j] is None:
            try:
                results[j] = core.receive_batch(envs, dispatch=False) if envs else []
            except Exception as exc:
                results[j] = exc
    return [r if r is not None else [] for r in results]


class _Job:
    """One agent's batch in the pass: parsed, its outcomes filled in run by run, or the
    exception that failed its part."""

    __slots__ = ("by_sender", "core", "failed", "items", "outcomes")

    def __init__(self, core: _Receiving, envelopes: list[Any]) -> None:
        self.core = core
        self.failed: BaseException | None = None
        self.items, self.outcomes, self.by_sender = group_by_sender(envelopes)


def _receive_together(jobs: list[tuple[_Receiving, list[Any]]]) -> list[Outcomes | BaseException]:
    """The pass itself, holding what it unseals (``receive_batch(dispatch=False)``'s rule:
    nothing it opens is saved before its handlers ran)."""
    cores = [core for core, _envs in jobs]
    for core in cores:
        core._holders.append(None)
    _holding.on = True
    try:
        parsed = [_Job(core, envs) for core, envs in jobs]
        runs: list[_Run] = []
        for job in parsed:
            try:
                for sender, indexes in job.by_sender.items():
                    runs.extend(_plan(job, sender, indexes))
            except Exception as exc:
                job.failed = exc
        _unseal([run for run in runs if run.job.failed is None])
        out: list[Outcomes | BaseException] = []
        for job in parsed:
            if job.failed is None:
                try:
                    out.append(job.core.batch_outcomes(job.items, job.outcomes, False))
                    continue
                except Exception as exc:
                    job.failed = exc
            out.append(job.failed)
        return out
    finally:
        _holding.on = False
        for core in cores:
            core._holders.pop()


def _plan(job: _Job, sender: str, indexes: list[int]) -> list[_Run]:
    """First contact is opened here, one envelope at a time (only when a session went away
    since the pass checked: ``Opening.joins``); a run that cannot go into the shared call
    takes the agent's own path at once; the rest is returned."""
    core, items, outcomes = job.core, job.items, job.outcomes
    envs = [items[i] for i in indexes]
    first, rest = core.open_first_contact(sender, envs)
    for index, result in zip(indexes, first, strict=False):
        outcomes[index] = result
    if not rest:
        return []
    indexes = indexes[len(first) :]
    session = core._sessions.get(sender)
    if session is None or session.deniable or len(rest) > UNSEAL_MANY_MAX:
        # (nothing to verify; or a run large enough to batch well on its own)
        _Run(job, sender, indexes, rest, session).fill(core._accept_run(sender, rest))
        return []
    return [_Run(job, sender, indexes, rest, session)]


def _unseal(runs: list[_Run]) -> None:
    """One native call for the runs whose agents' locks are free now and whose sessions are
    still current; the agent's own path for the others. A failure after the native call
    fails only its agent's job."""
    if not runs:
        return
    by_core: dict[int, list[_Run]] = {}
    for run in runs:
        by_core.setdefault(id(run.job.core), []).append(run)
    shared: list[_Run] = []
    alone: list[_Run] = []
    locked: list[_Receiving] = []
    opened: list[list[Any]] = []
    try:
        for core_runs in by_core.values():
            core = core_runs[0].job.core
            # (never wait for one agent's lock with others held: try, else its own path)
            if not core._lock.acquire(blocking=False):
                alone.extend(core_runs)
                continue
            locked.append(core)
            # (a handler may have replaced a session meanwhile: trust_new_identity)
            if all(core._sessions.get(run.sender) is run.session for run in core_runs):
                shared.extend(core_runs)
            else:
                alone.extend(core_runs)
        if len(shared) == 1:
            opened = [shared[0].session.unseal_many(shared[0].envelopes)]
        elif shared:
            opened = _crypto.unseal_across([(run.session, run.envelopes) for run in shared])
        for run, payloads in zip(shared, opened, strict=True):
            # (its lock held since before the unseal: see ``count_opened``)
            try:
                run.job.core.count_opened(run.sender, payloads)
            except Exception as exc:  # (past the native call: this job fails, not the pass)
                run.job.failed = exc
    finally:
        for core in locked:
            core._lock.release()
    for run, payloads in zip(shared, opened, strict=True):
        if run.job.failed is None:
            try:
                core = run.job.core
                run.fill(core.results_of(run.sender, run.envelopes, payloads, run.session))
            except Exception as exc:
                run.job.failed = exc
    for run in alone:
        if run.job.failed is None:
            try:
                run.fill(run.job.core._accept_run(run.sender, run.envelopes))
            except Exception as exc:
                run.job.failed = exc
    for core in {id(run.job.core): run.job.core for run in shared}.values():
        if core._dirty is not None and core._autosave:
            core._maybe_autosave()
