"""Steering sagas at run time: cancel, resume, retry from a step, and each saga's history.

>>> await sagaz.cancel_saga(saga_id, reason="customer called", store=store)  # doctest: +SKIP
>>> await sagaz.resume_saga(saga_id, store=store)  # doctest: +SKIP
>>> await sagaz.retry_saga(saga_id, from_step="charge", store=store)  # doctest: +SKIP
>>> for entry in await sagaz.saga_history(saga_id, store=store): ...  # doctest: +SKIP

or ``sagaz sagas cancel|resume|retry ID`` (``sagaz sagas show ID`` prints the history).

Each call checks the saga can take the action, writes a request to the store (at most one
open request per saga) and a ``*_requested`` entry to the saga's history, and returns; no
engine needs to run in the calling process. Every engine on the store reads the requests
every ``TriggerConfig.saga_control_interval_seconds`` (:mod:`sagaz.engine.steering_watch`):

* **cancel** (a ``pending`` or ``running`` saga, or a ``compensated`` one waiting for its
  automatic retry): the engine that runs the saga starts no
  further step (a step under way finishes), compensates the steps that completed, in reverse,
  and the saga ends ``cancelled`` (``failed`` if a compensation fails). Its event is settled
  like a completed one (inbox row completed, message acked, no retry, no dead letter), so a
  redelivery does not start it again. A saga that is not running anywhere (queued, or
  interrupted by a crash) is cancelled when an engine takes it up. One that completes before
  reaching a step boundary stays completed, and its history says so (``cancel_missed``). A
  compensated saga waiting for its retry is not retried: it ends ``cancelled`` at once; one
  with no retry left (dead-lettered) stays compensated (``cancel_missed``).
* **resume** (a ``compensated``, ``failed`` or ``cancelled`` saga): an engine running its
  trigger runs it again as a new attempt, from its stored context: the steps whose checkpoint
  is still ``completed`` keep their results and do not run again, every other step does
  (a compensated step's effects were undone, so it runs again).
* **retry from a step** (any finished saga, a completed one too): as resume, but the named
  step and every step after it (those that depend on it, in a DAG) run again; the steps
  before it keep their stored results, so they must still be ``completed`` (not compensated).

A request is finished, and its outcome written to the history, once the saga ends again.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable

from sagaz.abc import SagaStore
from sagaz.config import ensure_store
from sagaz.exceptions import SagaControlError
from sagaz.records import (
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    StepRecord,
)
from sagaz.saga.definition import SagaDefinition
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

__all__ = [
    "CANCELLED",
    "CANCEL_MISSED",
    "FINISHED",
    "REFUSED",
    "REQUESTED",
    "RESUMED",
    "RETRIED",
    "cancel_saga",
    "default_actor",
    "resume_saga",
    "retry_saga",
    "saga_history",
    "steps_to_rerun",
]

#: history actions written when an operator asks: ``cancel_requested``, ``resume_requested``,
#: ``retry_requested``
REQUESTED = {action: f"{action.value}_requested" for action in SagaAction}
#: the saga ended ``cancelled`` after a cancel
CANCELLED = "cancelled"
#: the saga ended otherwise before the cancel reached a step boundary
CANCEL_MISSED = "cancel_missed"
#: an engine took a resume up (detail: the attempt and the steps that run again)
RESUMED = "resumed"
#: an engine took a retry up (detail: the attempt and the steps that run again)
RETRIED = "retried"
#: the resumed or retried attempt ended (detail: its status and error)
FINISHED = "finished"
#: an engine could not act on the request (detail: why); the request is dropped
REFUSED = "refused"

_RESUMABLE = frozenset({SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.CANCELLED})


def default_actor() -> str:
    """Who asks, as the history records it: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def cancel_saga(
    saga_id: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    store: SagaStore | None = None,
) -> SagaControlRequest:
    """Cancel a ``pending`` or ``running`` saga: the engine running it starts no further
    step, compensates what completed and ends it ``cancelled`` (see the module docs). A
    ``compensated`` saga waiting for its automatic retry is not retried and ends
    ``cancelled``; one with no retry left stays compensated (history: ``cancel_missed``).

    Returns the stored request; the engines act on it within their
    ``saga_control_interval_seconds`` (the process-wide engine, when it runs on that store,
    at once). ``store``: where the saga is; default the process-wide engine's store if it
    runs, else the configured one (``sagaz.configure``, ``SAGAZ_STORE_URL``). ``actor``:
    who asks, for the history (default ``user@host``).

    Raises :class:`~sagaz.exceptions.SagaControlError` for a saga that cannot be cancelled
    (unknown, finished, compensating already, run without a trigger engine, or with a
    request open already).
    """
    store = await _store(store)
    record = await _saga(store, saga_id, SagaAction.CANCEL)
    if record.status is SagaStatus.COMPENSATING:
        raise SagaControlError(
            f"saga {saga_id} is compensating already (a step failed): it ends compensated, "
            "or failed if a compensation fails; nothing to cancel"
        )
    if record.status in TERMINAL_SAGA_STATUSES and record.status is not SagaStatus.COMPENSATED:
        raise SagaControlError(
            f"saga {saga_id} has ended {record.status.value}: nothing to cancel"
            + ("; to run it again: sagaz sagas resume ID" if record.status in _RESUMABLE else "")
        )
    return await _request(store, record, SagaAction.CANCEL, None, reason, actor)


async def resume_saga(
    saga_id: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    store: SagaStore | None = None,
) -> SagaControlRequest:
    """Run a ``compensated``, ``failed`` or ``cancelled`` saga again as a new attempt from its
    stored context: its steps that are still ``completed`` keep their results, the others
    run again. An engine running its trigger takes it up (see the module docs).

    Raises :class:`~sagaz.exceptions.SagaControlError` for a saga that cannot be resumed
    (unknown, completed, still running, run without a trigger engine, or with a request open
    already).
    """
    store = await _store(store)
    record = await _saga(store, saga_id, SagaAction.RESUME)
    if record.status is SagaStatus.COMPLETED:
        raise SagaControlError(
            f"saga {saga_id} completed: nothing to resume; to run some of its steps again: "
            "sagaz sagas retry ID --from-step NAME"
        )
    if record.status not in _RESUMABLE:
        raise SagaControlError(
            f"saga {saga_id} is {record.status.value}: it runs (or resumes by itself after a "
            "crash), so there is nothing to resume; cancel it first to stop it"
        )
    return await _request(store, record, SagaAction.RESUME, None, reason, actor)


async def retry_saga(
    saga_id: str,
    from_step: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    store: SagaStore | None = None,
) -> SagaControlRequest:
    """Run a finished saga (completed too) again as a new attempt from ``from_step``: that
    step and every step after it run again, the steps before it keep their stored results
    (so they must still be ``completed``). An engine running its trigger takes it up (see
    the module docs).

    Raises :class:`~sagaz.exceptions.SagaControlError` for a saga or step it cannot apply
    to (unknown saga, a step it never ran, a step before it that was compensated, a saga
    still running, run without a trigger engine, or with a request open already).
    """
    store = await _store(store)
    record = await _saga(store, saga_id, SagaAction.RETRY)
    if record.status not in TERMINAL_SAGA_STATUSES:
        raise SagaControlError(
            f"saga {saga_id} is {record.status.value}: retry a saga once it has ended "
            "(cancel it first to stop it)"
        )
    _check_kept(saga_id, await store.get_steps(saga_id), from_step)
    return await _request(store, record, SagaAction.RETRY, from_step, reason, actor)


async def saga_history(
    saga_id: str, *, limit: int = 100, store: SagaStore | None = None
) -> list[SagaHistoryRecord]:
    """What was done to a saga from outside its run, oldest first: operators' requests and
    what the engines did about them."""
    store = await _store(store)
    return await store.list_saga_history(saga_id, limit)


# -- checks ------------------------------------------------------------------------------------
async def _store(store: SagaStore | None) -> SagaStore:
    """``store``, else the store of the process-wide engine if it runs, else the configured
    one (as ``start_triggers`` picks it)."""
    if store is None:
        from sagaz.engine import process_engine as engine_module

        engine = engine_module._engine
        if engine is not None and engine.running:
            return engine.store
    return await ensure_store(store)


async def _saga(store: SagaStore, saga_id: str, action: SagaAction) -> SagaRecord:
    record = await store.get_saga(saga_id)
    if record is None:
        raise SagaControlError(f"no saga {saga_id} in the store (sagaz sagas list)")
    if record.trigger_id is None:
        raise SagaControlError(
            f"saga {saga_id} was run directly (Saga.run), not by a trigger engine: only an "
            f"engine running a saga's trigger can {action.value} it (a saga run directly "
            "that was interrupted resumes with Saga.run(context, saga_id=ID, store=...))"
        )
    return record


def _check_kept(saga_id: str, steps: list[StepRecord], from_step: str) -> None:
    """A retry keeps the results of the steps that completed before ``from_step``: refuse
    it when one of them was compensated (its effects were undone) or ``from_step`` never ran.
    (The engine checks the saga's own step order again when it takes the retry up.)"""
    by_name = {s.name: s for s in steps}
    step = by_name.get(from_step)
    if step is None:
        recorded = ", ".join(s.name for s in _in_completion_order(steps)) or "none"
        raise SagaControlError(
            f"saga {saga_id} has no step {from_step!r} that ran (steps that ran: {recorded}); "
            "retry from one of them, or resume it (sagaz sagas resume ID)"
        )
    until = step.completed_seq
    for earlier in _in_completion_order(steps):
        if earlier.completed_seq is None or (until is not None and earlier.completed_seq >= until):
            continue
        if earlier.status is not StepStatus.COMPLETED:
            raise SagaControlError(_undone(saga_id, earlier.name, from_step, earlier.status))


def _undone(saga_id: str, name: str, from_step: str, status: StepStatus | None) -> str:
    state = "never completed" if status is None else f"is {status.value}"
    return (
        f"saga {saga_id}: step {name!r}, before {from_step!r}, {state}, so it has no result "
        f"to keep (a compensated step's effects were undone): retry from {name!r}, or resume "
        "it (sagaz sagas resume ID), which runs again every step not completed"
    )


def _in_completion_order(steps: Iterable[StepRecord]) -> list[StepRecord]:
    return sorted(steps, key=lambda s: (s.completed_seq is None, s.completed_seq or 0, s.name))


def steps_to_rerun(
    saga_id: str, definition: SagaDefinition, steps: list[StepRecord], from_step: str | None
) -> list[str]:
    """The steps of a resumed (``from_step=None``) or retried saga that run again, in
    declaration order: every step not ``completed`` (compensated, failed, never run), and
    for a retry ``from_step``
    and every step after it (that depends on it, directly or not). Raises
    :class:`~sagaz.exceptions.SagaControlError` for an unknown step or a step before it
    without a completed result."""
    names = [s.action.name for s in definition.steps]
    status = {s.name: s.status for s in steps}
    again = {name for name in names if status.get(name) is not StepStatus.COMPLETED}
    if from_step is not None:
        if from_step not in names:
            raise SagaControlError(
                f"saga {saga_id}: its saga has no step {from_step!r} (its steps: "
                f"{', '.join(names)})"
            )
        for before in _related(definition, from_step, upstream=True):
            if status.get(before) is not StepStatus.COMPLETED:
                raise SagaControlError(_undone(saga_id, before, from_step, status.get(before)))
        again |= {from_step, *_related(definition, from_step, upstream=False)}
    return [name for name in names if name in again]


def _related(definition: SagaDefinition, name: str, *, upstream: bool) -> set[str]:
    """The steps ``name`` depends on (``upstream``), or that depend on it, transitively."""
    edges: dict[str, set[str]] = {s.action.name: set() for s in definition.steps}
    for step in definition.steps:
        for dep in step.depends_on:
            if upstream:
                edges[step.action.name].add(dep)
            else:
                edges[dep].add(step.action.name)
    found: set[str] = set()
    todo = [name]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


# -- writing the request -----------------------------------------------------------------------
async def _request(
    store: SagaStore,
    record: SagaRecord,
    action: SagaAction,
    step: str | None,
    reason: str | None,
    actor: str | None,
) -> SagaControlRequest:
    request = SagaControlRequest(
        record.saga_id,
        action,
        step=step,
        actor=actor or default_actor(),
        reason=reason,
        attempt=record.attempt,
    )
    if not await store.add_saga_request(request):
        open_ = await store.list_saga_requests(saga_id=record.saga_id)
        what = (
            f"a {open_[0].action.value} request by {open_[0].actor} is still open"
            if open_
            else "another request was being finished"
        )
        raise SagaControlError(
            f"saga {record.saga_id}: {what}; wait until the engines have acted on it "
            "(sagaz sagas show ID), then ask again"
        )
    detail = f"from step {step!r}" if step is not None else None
    if reason:
        detail = f"{detail}: {reason}" if detail else reason
    await store.add_saga_history(
        SagaHistoryRecord(record.saga_id, REQUESTED[action], request.actor, detail)
    )
    _wake_local_engine(store, request)
    return request


def _wake_local_engine(store: SagaStore, request: SagaControlRequest) -> None:
    """The process-wide engine on the same store acts now, not at its next read."""
    from sagaz.engine import process_engine as engine_module

    engine = engine_module._engine
    if engine is None or not engine.running or engine.store is not store:
        return
    steering = engine.steering
    if steering is not None:
        steering.notice(request)
