"""Running one saga: steps (in sequence; a DAG: sagaz.saga.dag), checkpoints, retries,
resume (compensation: sagaz.saga.compensation)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaz import tracing
from sagaz.clock import Clock, SystemClock
from sagaz.exceptions import (
    LeaseLostError,
    SagaError,
    SagaStepError,
    SagaTimeoutError,
    StoreUnavailableError,
)
from sagaz.records import OutboxMessage, SagaRecord, StepRecord
from sagaz.saga.compensation import SagaCompensation, describe_error
from sagaz.saga.context import SagaContext, StreamChannel, current_step
from sagaz.saga.dag import SagaDag
from sagaz.saga.definition import SagaDefinition, StepDefinition
from sagaz.saga.listeners import OutboxSagaListener, SagaListener, check_outbox_store, notify
from sagaz.saga.result import SagaResult
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

if TYPE_CHECKING:
    from sagaz.abc import SagaStore
    from sagaz.events import Delivery
    from sagaz.saga.cancellation import Cancellation
    from sagaz.saga.definition import Saga
    from sagaz.tracing import SpanRecorder

__all__ = ["SagaExecution"]

#: the clock of an execution given none (``Saga.run``): stateless, so shared
_SYSTEM_CLOCK = SystemClock()

# the members of the usual path, read once: on Python 3.11 ``SagaStatus.RUNNING`` goes
# through ``EnumType.__getattr__``'s hook (about 0.1 µs), several times per saga
_PENDING, _RUNNING, _COMPLETED = SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPLETED
_COMPENSATING = SagaStatus.COMPENSATING
_STEP_RUNNING, _STEP_COMPLETED = StepStatus.RUNNING, StepStatus.COMPLETED

#: the first hex digit of clock_seq with the RFC 4122 variant bits set, by the random digit
_VARIANT = dict(zip("0123456789abcdef", "89ab89ab89ab89ab", strict=True))


def _random_saga_id() -> str:
    """``str(uuid.uuid4())`` from the random hex directly: a third of its cost (``UUID``'s
    constructor and ``__str__`` are Python code), once per ``Saga.run`` without an id."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


class SagaExecution(SagaDag, SagaCompensation):
    """Runs one saga instance against a store, checkpointing every step transition.

    Interrupted executions resume by ``saga_id``: completed steps are not run again.
    """

    def __init__(
        self,
        saga: Saga,
        # by position too (the engine's runner, Saga.run: once per saga): a class called
        # with ten keywords builds a dict of them first, about 0.8 µs
        store: SagaStore,
        listeners: list[SagaListener] | None = None,
        clock: Clock | None = None,
        trigger_id: str | None = None,
        event: Any = None,
        owner: str | None = None,
        lease: Callable[[], datetime] | None = None,
        delivery: Delivery | None = None,
        cancellation: Cancellation | None = None,
        inbox: tuple[str, str] | None = None,
    ) -> None:
        self.saga = saga
        cls = type(saga)
        self.definition: SagaDefinition = cls.__sagaz_definition__  # definition(), no call
        self.saga_name = cls.saga_name
        self.store = store
        self.listeners = listeners or []
        self.clock = clock or _SYSTEM_CLOCK
        self.trigger_id = trigger_id
        self.event = event
        self.owner = owner
        #: the lease deadline for a write made now (the engine's ``lease_until``): each saga
        #: row written before the end carries a fresh one, not the run's first (a run longer
        #: than the lease would put its row back to an expired lease at each step, until the
        #: next renewal, a takeover's chance)
        self.lease = lease
        #: the event it runs for (engine runs): its trace context is the saga span's parent
        self.delivery = delivery
        #: an operator's cancel (sagaz.saga.cancellation): no step starts once it is set
        self.cancellation = cancellation
        self._spans: SpanRecorder | None = None
        self._seq = 0
        self._remaining = 0
        self._record: SagaRecord | None = None
        #: the inbox row ``(trigger_id, key)`` completed with the saga's completed state
        self.inbox = inbox
        #: whether the completed state was written together with that inbox row's completion
        self.inbox_completed = False
        self._began = False
        #: the saga row's new state, written with the next checkpoint (the first step's)
        self._unsaved: SagaRecord | None = None
        #: the last step's completion, written with the terminal state: (record, outbox,
        #: result for on_step_success)
        self._last_step: tuple[StepRecord, list[OutboxMessage], dict[str, Any]] | None = None

    @property
    def began(self) -> bool:
        """Whether :meth:`run` got as far as storing the saga as running (a new attempt
        included): a later run of the same ``saga_id`` then resumes it."""
        return self._began

    # -- entry point -----------------------------------------------------------------------
    def run(
        self,
        initial: Mapping[str, Any],
        saga_id: str | None = None,
        *,
        new_attempt: bool = False,
        known: SagaRecord | None = None,
    ) -> Coroutine[Any, Any, SagaResult]:
        """Run, resume, or (``new_attempt``) retry the saga ``saga_id`` from ``initial``: a
        coroutine to await, which answers the :class:`SagaResult`.

        ``known`` is the stored row when the caller just created it (skips one read).
        Without tracing the coroutine is the run itself (no coroutine around it: once per
        saga)."""
        if self.listeners:
            check_outbox_store(self.listeners, self.store, self.saga_name)
        saga_id = saga_id or _random_saga_id()
        self._spans = spans = tracing.recorder()
        if spans is None:
            return self._run(initial, saga_id, new_attempt, known)
        return self._run_traced(spans, initial, saga_id, new_attempt, known)

    async def _run_traced(
        self,
        spans: SpanRecorder,
        initial: Mapping[str, Any],
        saga_id: str,
        new_attempt: bool,
        known: SagaRecord | None,
    ) -> SagaResult:
        """:meth:`_run` within the saga's span (tracing on)."""
        delivery = self.delivery
        with spans.saga(
            self.saga_name,
            saga_id,
            parent=delivery.trace_context if delivery is not None else None,
            trigger_id=self.trigger_id,
            delivery=delivery,
        ) as span:
            result = await self._run(initial, saga_id, new_attempt, known)
            spans.ended(span, result)
            return result

    async def _run(
        self,
        initial: Mapping[str, Any],
        saga_id: str,
        new_attempt: bool,
        known: SagaRecord | None,
    ) -> SagaResult:
        if known is not None and known.saga_id == saga_id:
            record, created = known, False
        else:
            # saga_id, saga_name, status, context, attempt, error, trigger_id, event, owner,
            # lease_expires_at: by position (once per saga; keywords cost a third more)
            record, created = await self.store.create_saga(
                SagaRecord(
                    saga_id,
                    self.saga_name,
                    _RUNNING,
                    dict(initial),
                    1,
                    None,
                    self.trigger_id,
                    self.event,
                    self.owner,
                    None if self.lease is None else self.lease(),
                )
            )
            self._began = created
        steps: dict[str, StepRecord] = {}
        if not created:
            if record.status in TERMINAL_SAGA_STATUSES:
                if not new_attempt:
                    return await self._stored_result(record)
                await self.store.reset_steps(saga_id)
                record.attempt += 1
                record.context = dict(initial)
                record.error = None
            elif record.status is _PENDING:
                record.context = dict(initial) or record.context
            else:
                steps = {s.name: s for s in await self.store.get_steps(saga_id)}
            record.owner = self.owner or record.owner
            if self.lease is not None:
                record.lease_expires_at = self.lease()
            resuming_compensation = record.status is _COMPENSATING
            if not resuming_compensation:
                record.status = _RUNNING
            # written with the first step's running checkpoint: one store operation
            self._unsaved = record
        else:
            resuming_compensation = False
        self._record = record
        ctx = SagaContext(
            record.context, saga_id=saga_id, saga_name=self.saga_name, attempt=record.attempt
        )
        if self.definition.readers:
            ctx.declare_streams(self.definition.readers)
        done = self._restore(ctx, steps) if steps else set()
        if self.listeners:
            await notify(self.listeners, "on_saga_start", self.saga_name, saga_id, ctx)
        if resuming_compensation:
            return await self._compensate(ctx, None, record.error or "resumed compensation")
        # the steps, then the completed state, awaited from this coroutine: each wake-up of a
        # store call resumes every coroutine from the task to the store (a step's running
        # checkpoint: 8 before, 5 now; benchmarks/README.md, branch `wake-chain`)
        self._remaining = len(self.definition.steps) - len(done)
        failure: tuple[str, BaseException] | None = None
        if self.definition.sequential:  # the common case: no task per step
            for step in self.definition.steps:
                name = step.action.name
                if name in done:
                    continue
                try:
                    await self._run_step(step, ctx, None)
                except (StoreUnavailableError, LeaseLostError):
                    raise  # the store is away (or the saga another's): the step did not fail
                except Exception as error:
                    failure = (name, error)
                    break
                done.add(name)
        else:
            failure = await self._forward_dag(ctx, done)
        if failure is None:
            record.status = _COMPLETED
            record.context = ctx.to_dict()
            last = self._last_step
            await self._finish(record)
            self._began = True
            self.inbox_completed = self.inbox is not None
            if self.listeners:
                if last is not None:
                    name, result = last[0].name, last[2]
                    await notify(
                        self.listeners, "on_step_success", self.saga_name, name, ctx, result
                    )
                await notify(self.listeners, "on_saga_complete", self.saga_name, saga_id, ctx)
                record.context = ctx.to_dict()  # a listener may have written to the context
            # saga_id, status, context, error, failed_step, compensation_errors, attempt: by
            # position (a keyword makes the call build a dict of it)
            return SagaResult(saga_id, _COMPLETED, record.context, None, None, {}, record.attempt)
        failed_step, exc = failure
        return await self._compensate(ctx, failed_step, exc)

    def _finish(self, record: SagaRecord) -> Coroutine[Any, Any, None]:
        """The completed state's store operation, to await: the last step's completion, the
        saga row, the outbox messages (the step's, then the listeners') and, when the saga
        runs for an inbox row, that row's completion. The store's own awaitable, no
        coroutine around it (:meth:`_run` then tells the listeners)."""
        last, self._last_step = self._last_step, None
        steps: list[StepRecord] = []
        outbox: list[OutboxMessage] = []
        if last is not None:
            steps.append(last[0])
            outbox += last[1]
        if self.listeners:
            outbox += self._terminal_outbox(record)
        # the store itself, not _checkpoint: the saga row is given (nothing unsaved to add)
        self._unsaved = None
        return self.store.save_checkpoint(record, steps, outbox, complete_inbox=self.inbox)

    async def _checkpoint(
        self,
        *,
        saga: SagaRecord | None = None,
        steps: list[StepRecord] | None = None,
        outbox: list[OutboxMessage] | None = None,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One store operation: ``steps``, the saga row (``saga``, or the state waiting to be
        written since the saga started), ``outbox``, and the inbox row's completion."""
        pending, self._unsaved = self._unsaved, None
        saga = saga or pending
        steps = steps or []
        if saga is not None and self.lease is not None:
            saga.lease_expires_at = self.lease()
        if saga is None and complete_inbox is None and len(steps) == 1:
            await self.store.save_step(steps[0], outbox or ())
            return
        await self.store.save_checkpoint(saga, steps, outbox or (), complete_inbox=complete_inbox)
        if saga is not None:
            self._began = True

    # -- outbox listeners ------------------------------------------------------------------
    def _terminal_outbox(self, record: SagaRecord) -> list[OutboxMessage]:
        """The outbox listeners' messages, written with the saga's terminal state."""
        messages: list[OutboxMessage] = []
        for listener in self.listeners:
            if isinstance(listener, OutboxSagaListener):
                messages += listener.saga_messages(
                    self.saga_name, record.saga_id, record.status, record.error
                )
        if messages and self._spans is not None:
            trace_headers = tracing.outgoing_headers()  # the saga span's context
            for message in messages:
                message.headers = {**trace_headers, **message.headers}
        return messages

    # -- restore ---------------------------------------------------------------------------
    def _restore(self, ctx: SagaContext, steps: dict[str, StepRecord]) -> set[str]:
        """Re-apply completed steps (in completion order); return the names not to run again."""
        if not steps:
            return set()
        known = {s.action.name for s in self.definition.steps}
        completed = sorted(
            (s for s in steps.values() if s.name in known and s.status is StepStatus.COMPLETED),
            key=lambda s: s.completed_seq or 0,
        )
        for step in completed:
            ctx.update(step.result or {})
            self._seq = max(self._seq, step.completed_seq or 0)
        done = {s.name for s in completed}
        # a finished stream whose reader did not finish is produced again
        for name, readers in self.definition.readers.items():
            if name in done and any(r not in done for r in readers):
                done.discard(name)
        return done

    # -- forward ---------------------------------------------------------------------------
    def _run_step(
        self, step: StepDefinition, ctx: SagaContext, channel: StreamChannel | None
    ) -> Coroutine[Any, Any, None]:
        """The coroutine of one step with its retries (a DAG's task runs it)."""
        if self._spans is None:
            return self._try_step(step, ctx, channel)
        return self._try_step_traced(self._spans, step, ctx, channel)

    async def _try_step_traced(
        self,
        spans: SpanRecorder,
        step: StepDefinition,
        ctx: SagaContext,
        channel: StreamChannel | None,
    ) -> None:
        """:meth:`_try_step` within the step's span (tracing on)."""
        with spans.step(step.action.name):
            await self._try_step(step, ctx, channel)

    async def _try_step(
        self, step: StepDefinition, ctx: SagaContext, channel: StreamChannel | None
    ) -> None:
        """One step with its retries and checkpoints, its name in ``current_step`` meanwhile."""
        spec = step.action
        name = spec.name
        fn = getattr(self.saga, spec.attr)
        saga_id = ctx.saga_id
        tries = spec.max_retries + 1
        cancellation = self.cancellation
        if cancellation is not None and cancellation.requested:
            cancellation.check(name)  # cancelled: this step fails before it starts
        token = current_step.set(name)
        try:
            for try_no in range(1, tries + 1):
                # the running checkpoint, with the saga row's new state if one waits (the first
                # step's): what _checkpoint does, without its call (once per step)
                running = StepRecord(saga_id, name, _STEP_RUNNING, None, None, try_no)
                unsaved, self._unsaved = self._unsaved, None
                if unsaved is None:
                    await self.store.save_step(running)
                else:
                    await self.store.save_checkpoint(unsaved, [running])
                    self._began = True
                if self.listeners:
                    await notify(self.listeners, "on_step_enter", self.saga_name, name, ctx)
                try:
                    if spec.timeout_seconds is None:  # the common case: no context manager per step
                        if channel is not None:
                            result = await self._produce(fn, ctx, channel)
                        else:  # no call for the usual return values: None, a dict (copied)
                            value = await fn(ctx)
                            result = (
                                {}
                                if value is None
                                else dict(value)
                                if type(value) is dict
                                else self._check_result(name, value)
                            )
                    else:
                        async with asyncio.timeout(spec.timeout_seconds):
                            if channel is not None:
                                result = await self._produce(fn, ctx, channel)
                            else:
                                result = self._check_result(name, await fn(ctx))
                except TimeoutError as exc:
                    error: Exception = SagaTimeoutError(
                        f"step {name!r} of saga {self.saga_name!r} exceeded "
                        f"timeout_seconds={spec.timeout_seconds}"
                    )
                    error.__cause__ = exc
                except SagaStepError as exc:
                    error = exc
                    tries = try_no  # a broken return value is a bug: retrying cannot help
                except StoreUnavailableError as exc:
                    # the step's own use of some store failed: a step failure like any other,
                    # never mistaken for an outage of this saga's store (which _run lets by)
                    error = SagaError(f"step {name!r} raised {describe_error(exc)}")
                    error.__cause__ = exc
                except Exception as exc:
                    error = exc
                else:
                    self._seq += 1
                    if result:  # (a step that returns None adds nothing: no call)
                        ctx.update(result)
                    # saga_id, name, status, result, error, attempts, completed_seq: by position
                    completed = StepRecord(
                        saga_id, name, _STEP_COMPLETED, result, None, try_no, self._seq
                    )
                    self._remaining -= 1
                    if self._remaining == 0 and self._record is not None:
                        # the last step: its completion is written with the terminal state, in
                        # the same store operation (on_step_success is told then)
                        self._last_step = (completed, ctx.take_outbox(name), result)
                        return
                    saga = self._record
                    if saga is not None:
                        # direct ``ctx[...] = ...`` writes survive a crash, with the step
                        saga.context = ctx.to_dict()
                    await self._checkpoint(
                        saga=saga, steps=[completed], outbox=ctx.take_outbox(name)
                    )
                    if self.listeners:
                        await notify(
                            self.listeners, "on_step_success", self.saga_name, name, ctx, result
                        )
                    return
                ctx.take_outbox(name)  # a failed try publishes nothing
                if self.listeners:
                    await notify(
                        self.listeners, "on_step_failure", self.saga_name, name, ctx, error
                    )
                if try_no < tries:
                    if self._spans is not None:
                        self._spans.failed_try(error, try_no)
                    await self.clock.sleep(spec.retry_backoff_seconds * 2 ** (try_no - 1))
                    continue
                await self.store.save_step(
                    StepRecord(
                        saga_id,
                        name,
                        StepStatus.FAILED,
                        error=describe_error(error),
                        attempts=try_no,
                    )
                )
                raise error
        finally:
            current_step.reset(token)

    async def _produce(self, fn: Any, ctx: SagaContext, channel: StreamChannel) -> dict[str, Any]:
        generator = fn(ctx)
        try:
            async for record in generator:
                await channel.put(record)
        finally:
            await generator.aclose()
        await channel.close()
        return {}

    def _check_result(self, name: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        raise SagaStepError(
            f"{type(self.saga).__qualname__}: step {name!r} returned {type(value).__name__} "
            f"({value!r:.80}); an action must return a dict (merged into the context) or None"
        )
