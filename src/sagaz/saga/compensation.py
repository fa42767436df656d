"""Undoing a failed or cancelled saga: its completed steps' compensations, newest first.

:class:`SagaCompensation` is the compensation half of :class:`~sagaz.saga.execution.SagaExecution`
(which inherits it): it runs each compensation with its retries and timeout, records every
step's outcome, and writes the saga's terminal state (``compensated``, ``cancelled`` or
``failed``). A saga that crashed mid-compensation resumes here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sagaz.exceptions import SagaCancelledError
from sagaz.records import OutboxMessage, SagaRecord, StepRecord
from sagaz.saga.context import SagaContext
from sagaz.saga.definition import StepDefinition
from sagaz.saga.listeners import notify
from sagaz.saga.result import SagaResult
from sagaz.types import SagaStatus, StepStatus

if TYPE_CHECKING:
    from sagaz.abc import SagaStore
    from sagaz.clock import Clock
    from sagaz.saga.definition import Saga, SagaDefinition
    from sagaz.saga.listeners import SagaListener
    from sagaz.tracing import SpanRecorder

__all__ = ["SagaCompensation", "describe_error"]

logger = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """``"ValueError: out of stock"``, or the exception's type name when it has no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SagaCompensation:
    """The compensation path of one saga execution (a base of ``SagaExecution``)."""

    saga: Saga
    definition: SagaDefinition
    saga_name: str
    store: SagaStore
    listeners: list[SagaListener]
    clock: Clock
    trigger_id: str | None
    _spans: SpanRecorder | None
    _record: SagaRecord | None

    async def _checkpoint(self, *, saga: SagaRecord | None = None) -> None:
        raise NotImplementedError  # SagaExecution's: one store operation with the saga row

    def _terminal_outbox(self, record: SagaRecord) -> list[OutboxMessage]:
        raise NotImplementedError  # SagaExecution's: the outbox listeners' messages

    # -- compensation ----------------------------------------------------------------------
    async def _compensate(
        self, ctx: SagaContext, failed_step: str | None, cause: BaseException | str
    ) -> SagaResult:
        record = self._record
        assert record is not None
        saga_id = record.saga_id
        cancelled = isinstance(cause, SagaCancelledError)
        if cancelled:
            failed_step, error = None, str(cause)  # no step failed: it ends cancelled
        else:
            error = (
                cause
                if isinstance(cause, str)
                else f"step {failed_step!r} failed: {describe_error(cause)}"
            )
        record.status = SagaStatus.COMPENSATING
        record.error = error
        record.context = ctx.to_dict()
        await self._checkpoint(saga=record)
        steps = await self.store.get_steps(saga_id)
        if failed_step is None and not cancelled:
            failed_step = next((s.name for s in steps if s.status is StepStatus.FAILED), None)
        to_undo = sorted(
            (s for s in steps if s.status in (StepStatus.COMPLETED, StepStatus.COMPENSATING)),
            key=lambda s: s.completed_seq or 0,
            reverse=True,
        )
        errors: dict[str, str] = {
            s.name: s.compensation_error or "compensation failed"
            for s in steps
            if s.status is StepStatus.COMPENSATION_FAILED
        }
        for step in to_undo:
            try:
                definition = self.definition.step(step.name)
            except KeyError:
                continue
            if definition.compensation is not None:
                problem = await self._run_compensation(definition, ctx, step)
                if problem is not None:
                    errors[step.name] = problem
        status = (
            SagaStatus.FAILED
            if errors
            else SagaStatus.CANCELLED
            if cancelled
            else SagaStatus.COMPENSATED
        )
        if errors:
            error += "; " + "; ".join(
                f"compensation of {name!r} failed: {msg}" for name, msg in errors.items()
            )
        record.status = status
        record.error = error
        record.context = ctx.to_dict()
        await self.store.save_saga(record, self._terminal_outbox(record))
        if self.listeners:
            await notify(self.listeners, "on_saga_failed", self.saga_name, saga_id, ctx, cause)
        return SagaResult(
            saga_id,
            status,
            ctx.to_dict(),
            error=error,
            failed_step=failed_step,
            compensation_errors=errors,
            attempt=record.attempt,
        )

    async def _run_compensation(
        self, definition: StepDefinition, ctx: SagaContext, step: StepRecord
    ) -> str | None:
        if self._spans is None:
            return await self._undo(definition, ctx, step)
        with self._spans.step(step.name, compensation=True) as span:
            problem = await self._undo(definition, ctx, step)
            if problem is not None:
                self._spans.failed(span, problem)
            return problem

    async def _undo(
        self, definition: StepDefinition, ctx: SagaContext, step: StepRecord
    ) -> str | None:
        spec = definition.compensation
        assert spec is not None
        fn = getattr(self.saga, spec.attr)
        step.status = StepStatus.COMPENSATING
        await self.store.save_step(step)
        if self.listeners:
            await notify(self.listeners, "on_compensation_start", self.saga_name, step.name, ctx)
        last = ""
        for try_no in range(1, spec.max_retries + 2):
            try:
                async with asyncio.timeout(spec.timeout_seconds):
                    await fn(ctx)
            except TimeoutError:
                last = f"timed out after timeout_seconds={spec.timeout_seconds} (try {try_no})"
            except Exception as exc:
                last = f"{describe_error(exc)} (try {try_no})"
                logger.warning(
                    "compensation of %s failed",
                    step.name,
                    extra={
                        "trigger": self.trigger_id,
                        "saga_id": ctx.saga_id,
                        "step": step.name,
                        "try": try_no,
                    },
                )
                if self._spans is not None and try_no <= spec.max_retries:
                    self._spans.failed_try(exc, try_no)
            else:
                step.status = StepStatus.COMPENSATED
                await self.store.save_step(step)
                await notify(
                    self.listeners, "on_compensation_complete", self.saga_name, step.name, ctx
                )
                return None
            if try_no <= spec.max_retries:
                await self.clock.sleep(spec.retry_backoff_seconds * 2 ** (try_no - 1))
        step.status = StepStatus.COMPENSATION_FAILED
        step.compensation_error = last
        await self.store.save_step(step)
        return last

    # -- stored result ---------------------------------------------------------------------
    async def _stored_result(self, record: SagaRecord) -> SagaResult:
        failed_step: str | None = None
        errors: dict[str, str] = {}
        if record.status is not SagaStatus.COMPLETED:
            for step in await self.store.get_steps(record.saga_id):
                if step.status is StepStatus.FAILED:
                    failed_step = step.name
                if step.status is StepStatus.COMPENSATION_FAILED:
                    errors[step.name] = step.compensation_error or "compensation failed"
        return SagaResult(
            record.saga_id,
            record.status,
            dict(record.context),
            error=record.error,
            failed_step=failed_step,
            compensation_errors=errors,
            attempt=record.attempt,
        )
