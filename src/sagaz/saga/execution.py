"""Running one saga: steps (sequence or DAG), checkpoints, retries, resume (compensation:
sagaz.saga.compensation)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaz import tracing
from sagaz.clock import Clock, SystemClock
from sagaz.exceptions import (
    ConfigurationError,
    LeaseLostError,
    SagaError,
    SagaStepError,
    SagaTimeoutError,
    StoreUnavailableError,
)
from sagaz.records import OutboxMessage, SagaRecord, StepRecord
from sagaz.saga.compensation import SagaCompensation, describe_error
from sagaz.saga.context import SagaContext, StreamChannel, current_step
from sagaz.saga.definition import StepDefinition
from sagaz.saga.listeners import OutboxSagaListener, SagaListener, notify
from sagaz.saga.result import SagaResult
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

if TYPE_CHECKING:
    from sagaz.abc import SagaStore
    from sagaz.events import Delivery
    from sagaz.saga.cancellation import Cancellation
    from sagaz.saga.definition import Saga
    from sagaz.tracing import SpanRecorder

__all__ = ["SagaExecution"]

logger = logging.getLogger(__name__)


class SagaExecution(SagaCompensation):
    """Runs one saga instance against a store, checkpointing every step transition.

    Interrupted executions resume by ``saga_id``: completed steps are not run again.
    """

    def __init__(
        self,
        saga: Saga,
        *,
        store: SagaStore,
        listeners: list[SagaListener] | None = None,
        clock: Clock | None = None,
        trigger_id: str | None = None,
        event: Any = None,
        owner: str | None = None,
        lease_until: datetime | None = None,
        delivery: Delivery | None = None,
        cancellation: Cancellation | None = None,
        inbox: tuple[str, str] | None = None,
    ) -> None:
        self.saga = saga
        self.definition = type(saga).definition()
        self.saga_name = type(saga).saga_name
        self.store = store
        self.listeners = listeners or []
        self.clock = clock or SystemClock()
        self.trigger_id = trigger_id
        self.event = event
        self.owner = owner
        self.lease_until = lease_until
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
    async def run(
        self,
        initial: Mapping[str, Any],
        saga_id: str | None = None,
        *,
        new_attempt: bool = False,
        known: SagaRecord | None = None,
    ) -> SagaResult:
        """Run, resume, or (``new_attempt``) retry the saga ``saga_id`` from ``initial``.

        ``known`` is the stored row when the caller just created it (skips one read).
        """
        self._check_outbox_listeners()
        saga_id = saga_id or str(uuid.uuid4())
        self._spans = spans = tracing.recorder()
        if spans is None:
            return await self._run(initial, saga_id, new_attempt, known)
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
            record, created = await self.store.create_saga(
                SagaRecord(
                    saga_id=saga_id,
                    saga_name=self.saga_name,
                    status=SagaStatus.RUNNING,
                    context=dict(initial),
                    trigger_id=self.trigger_id,
                    event=self.event,
                    owner=self.owner,
                    lease_expires_at=self.lease_until,
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
            elif record.status is SagaStatus.PENDING:
                record.context = dict(initial) or record.context
            else:
                steps = {s.name: s for s in await self.store.get_steps(saga_id)}
            record.owner = self.owner or record.owner
            record.lease_expires_at = self.lease_until or record.lease_expires_at
            resuming_compensation = record.status is SagaStatus.COMPENSATING
            if not resuming_compensation:
                record.status = SagaStatus.RUNNING
            # written with the first step's running checkpoint: one store operation
            self._unsaved = record
        else:
            resuming_compensation = False
        self._record = record
        ctx = SagaContext(
            record.context, saga_id=saga_id, saga_name=self.saga_name, attempt=record.attempt
        )
        ctx.declare_streams(self.definition.readers)
        done = self._restore(ctx, steps) if steps else set()
        if self.listeners:
            await notify(self.listeners, "on_saga_start", self.saga_name, saga_id, ctx)
        if resuming_compensation:
            return await self._compensate(ctx, None, record.error or "resumed compensation")
        failure = await self._forward(ctx, done)
        if failure is None:
            record.status = SagaStatus.COMPLETED
            record.context = ctx.to_dict()
            await self._finish(record, ctx)
            if self.listeners:
                await notify(self.listeners, "on_saga_complete", self.saga_name, saga_id, ctx)
                record.context = ctx.to_dict()  # a listener may have written to the context
            return SagaResult(saga_id, SagaStatus.COMPLETED, record.context, attempt=record.attempt)
        failed_step, exc = failure
        return await self._compensate(ctx, failed_step, exc)

    async def _finish(self, record: SagaRecord, ctx: SagaContext) -> None:
        """Write the completed state in one store operation: the last step's completion, the
        saga row, the outbox messages (the step's, then the listeners') and, when the saga
        runs for an inbox row, that row's completion."""
        last, self._last_step = self._last_step, None
        steps: list[StepRecord] = []
        outbox: list[OutboxMessage] = []
        if last is not None:
            steps.append(last[0])
            outbox += last[1]
        outbox += self._terminal_outbox(record)
        await self._checkpoint(saga=record, steps=steps, outbox=outbox, complete_inbox=self.inbox)
        self.inbox_completed = self.inbox is not None
        if last is not None and self.listeners:
            name = last[0].name
            await notify(self.listeners, "on_step_success", self.saga_name, name, ctx, last[2])

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
        if saga is None and complete_inbox is None and len(steps) == 1:
            await self.store.save_step(steps[0], outbox or ())
            return
        await self.store.save_checkpoint(saga, steps, outbox or (), complete_inbox=complete_inbox)
        if saga is not None:
            self._began = True

    # -- outbox listeners ------------------------------------------------------------------
    def _check_outbox_listeners(self) -> None:
        """An ``OutboxSagaListener`` writes in the saga's own transaction: same store only."""
        for listener in self.listeners:
            if not isinstance(listener, OutboxSagaListener):
                continue
            if listener.store is not None and listener.store is not self.store:
                raise ConfigurationError(
                    f"the OutboxSagaListener of saga {self.saga_name!r} writes to "
                    f"{listener.store!r}, but the saga runs on {self.store!r}: its messages are "
                    "written in the same transaction as the saga's state, so both need the "
                    "same store. Run the saga on that store (Saga.run(..., store=...), "
                    "start_triggers(store=...)) or create OutboxSagaListener() without a store"
                )

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
    async def _forward(self, ctx: SagaContext, done: set[str]) -> tuple[str, BaseException] | None:
        self._remaining = len(self.definition.steps) - len(done)
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
                    return (name, error)
                done.add(name)
            return None
        started: set[str] = set(done)
        running: dict[asyncio.Task[None], str] = {}
        channels: dict[str, StreamChannel] = {}
        failure: tuple[str, BaseException] | None = None
        try:
            while True:
                if failure is None:
                    for step in self.definition.steps:
                        name = step.action.name
                        if name in started or not self._ready(step, done, started):
                            continue
                        started.add(name)
                        channel = ctx.open_stream(name) if step.action.streaming else None
                        if channel is not None:
                            channels[name] = channel
                            self._detach_unread({name: channel}, done)
                        task = asyncio.create_task(
                            self._run_step(step, ctx, channel), name=f"sagaz-step-{name}"
                        )
                        running[task] = name
                if not running:
                    return failure
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    name = running.pop(task)
                    exc = task.exception()
                    if isinstance(exc, (StoreUnavailableError, LeaseLostError)):
                        ctx.abort_streams()
                        raise exc  # not a step failure (see above); the others are cancelled
                    if exc is not None:
                        if failure is None:
                            failure = (name, exc)
                            ctx.abort_streams()
                    else:
                        done.add(name)
                self._detach_unread(channels, done)
                self._report_drained(ctx, channels)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _ready(self, step: StepDefinition, done: set[str], started: set[str]) -> bool:
        for dep in step.depends_on:
            if dep in done:
                continue
            if dep in started and self.definition.step(dep).action.streaming:
                continue  # readers of a stream run while it is produced
            return False
        return True

    def _detach_unread(self, channels: dict[str, StreamChannel], done: set[str]) -> None:
        """Nobody will read a stream whose readers all finished (or that has none): from then
        on its producer runs to completion without waiting, its records counted and dropped."""
        for name, channel in channels.items():
            if all(r in done for r in self.definition.readers[name]):
                channel.detach()

    def _report_drained(self, ctx: SagaContext, channels: dict[str, StreamChannel]) -> None:
        """Log each finished stream whose records were (partly) not read, once."""
        for name, channel in list(channels.items()):
            if not (channel.closed and channel.detached):
                continue
            del channels[name]
            if channel.discarded:
                logger.info(
                    "stream %r of saga %r: %d of its %d records were read by no step "
                    "and were dropped",
                    name,
                    self.saga_name,
                    channel.discarded,
                    channel.yielded,
                    extra={
                        "saga_id": ctx.saga_id,
                        "step": name,
                        "yielded": channel.yielded,
                        "discarded": channel.discarded,
                    },
                )

    async def _run_step(
        self, step: StepDefinition, ctx: SagaContext, channel: StreamChannel | None
    ) -> None:
        spec = step.action
        name = spec.name
        if self.cancellation is not None:
            self.cancellation.check(name)  # cancelled: this step fails before it starts
        token = current_step.set(name)
        try:
            if self._spans is None:
                await self._try_step(step, ctx, channel)
            else:
                with self._spans.step(name):
                    await self._try_step(step, ctx, channel)
        finally:
            current_step.reset(token)

    async def _try_step(
        self, step: StepDefinition, ctx: SagaContext, channel: StreamChannel | None
    ) -> None:
        spec = step.action
        name = spec.name
        fn = getattr(self.saga, spec.attr)
        saga_id = ctx.saga_id
        tries = spec.max_retries + 1
        for try_no in range(1, tries + 1):
            await self._checkpoint(
                steps=[StepRecord(saga_id, name, StepStatus.RUNNING, attempts=try_no)]
            )
            if self.listeners:
                await notify(self.listeners, "on_step_enter", self.saga_name, name, ctx)
            try:
                if spec.timeout_seconds is None:  # the common case: no context manager per step
                    if channel is not None:
                        result = await self._produce(fn, ctx, channel)
                    else:
                        result = self._check_result(name, await fn(ctx))
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
                # never mistaken for an outage of this saga's store (which _forward lets by)
                error = SagaError(f"step {name!r} raised {describe_error(exc)}")
                error.__cause__ = exc
            except Exception as exc:
                error = exc
            else:
                self._seq += 1
                ctx.update(result)
                completed = StepRecord(
                    saga_id,
                    name,
                    StepStatus.COMPLETED,
                    result=result,
                    attempts=try_no,
                    completed_seq=self._seq,
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
                await self._checkpoint(saga=saga, steps=[completed], outbox=ctx.take_outbox(name))
                if self.listeners:
                    await notify(
                        self.listeners, "on_step_success", self.saga_name, name, ctx, result
                    )
                return
            ctx.take_outbox(name)  # a failed try publishes nothing
            if self.listeners:
                await notify(self.listeners, "on_step_failure", self.saga_name, name, ctx, error)
            if try_no < tries:
                if self._spans is not None:
                    self._spans.failed_try(error, try_no)
                await self.clock.sleep(spec.retry_backoff_seconds * 2 ** (try_no - 1))
                continue
            await self.store.save_step(
                StepRecord(
                    saga_id, name, StepStatus.FAILED, error=describe_error(error), attempts=try_no
                )
            )
            raise error

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
