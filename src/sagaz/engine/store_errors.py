"""Events whose admission a store error interrupted, held and admitted again
(:class:`StoreErrors`).

An outage (:class:`~sagaz.exceptions.StoreUnavailableError`) is waited for
(:mod:`sagaz.engine.store_outage`). Any other error of the store during admission (a value it
refuses, a failed transaction, a bug) was answered with a nack, which is neither defined nor
bounded: Kafka never commits past a nacked offset before a restart or a rebalance (the
partition's commits stop there), RabbitMQ and SQS deliver the event again at once (a hot loop
while the error repeats), a cron tick or a poll's event was lost, and a key the claim had
already made ours stayed ours, its lease renewed by the heartbeat while nothing ran its saga.

DESIGN 3.5 acks a broker's message only once its saga's terminal state, or its dead letter,
is in the store (3.6: retried with a backoff, then dead-lettered). So the event is held here,
neither acked nor nacked, and admitted again after a :class:`~sagaz.backoff.Backoff`: its key
claimed again (ours already, it is taken over), its trigger method run, its saga queued past
the queue's bound (the delivery is already held). An outage meanwhile is waited for and not
counted. After :attr:`StoreErrors.attempts` failed attempts (the first included), or after
the first when its error is a value the store cannot keep
(:class:`~sagaz.exceptions.UnstorableValueError`), the event is dead-lettered with the last
error (reason ``store_error``, its admission reason ``invalid``), its claim undone, and
acked; a dead letter the store refuses too is tried again, at the backoff's longest delay,
until it is stored: nothing is acked before the store has it.
While the engine stops, a held event is nacked (redelivered, or recovered from its pending row).

The same policy holds the delivery of a saga whose run a store error ended
(:mod:`sagaz.engine.run_errors`): :class:`HeldEvents` is what both share.

The caller gets ``BUSY`` (its saga id): in progress, neither accepted nor refused yet; a
webhook answers 202 ``in_progress``. A webhook request whose claim itself failed is not held
(nothing keeps its event): it is answered 503, and its caller retries.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from sagaz._aio import TaskSet
from sagaz.backoff import Backoff
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.candidate import Candidate
from sagaz.engine.not_started import NotStarted
from sagaz.engine.settlement import Settlement
from sagaz.engine.work_item import WorkItem
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery, Reason
from sagaz.exceptions import StoreUnavailableError, UnstorableValueError
from sagaz.types import SagaStatus

__all__ = ["STORE_ERROR", "HeldEvents", "StoreErrors"]

#: the reason of the dead letter of an event whose admission, or whose saga's run
#: (:mod:`sagaz.engine.run_errors`), the store kept failing
STORE_ERROR = "store_error"

#: what a :class:`HeldEvents` holds: an admission's candidate, or a run's work item
Held = TypeVar("Held")


class HeldEvents(Generic[Held]):
    """What admission's :class:`StoreErrors` and the runner's
    :class:`~sagaz.engine.run_errors.RunErrors` share: events held in tasks of their own
    while what a store error interrupted is tried again with a backoff, an outage waited
    for and not counted, and a dead letter (reason ``store_error``) stored at last, however
    long the store refuses it; while the engine stops, those events are nacked.

    A subclass says what trying again (:meth:`_again`), giving up (:meth:`_give_up`) and
    being interrupted (:meth:`_interrupted`) mean for what it holds."""

    #: attempts, the first included, before the event is dead-lettered
    attempts: ClassVar[int] = 5
    #: the backoff between attempts: from ``initial`` seconds, doubling up to ``maximum``
    initial: ClassVar[float] = 0.5
    maximum: ClassVar[float] = 8.0

    def __init__(self, state: PipelineState, settlement: Settlement) -> None:
        self.state = state
        self.settlement = settlement
        self._closing = asyncio.Event()
        self._tasks = TaskSet()
        #: the sagas of the events handed back (nacked) because the engine stops: unfinished,
        #: given back by the engine's stop (:func:`~sagaz.engine.leases.release_leases`)
        self.interrupted: list[str] = []

    @property
    def stopping(self) -> bool:
        """Whether the engine stops (:meth:`close` was called): hold nothing more."""
        return self._closing.is_set()

    def backoff(self) -> Backoff:
        """The backoff between the attempts of one event."""
        return Backoff(self.state.clock, initial=self.initial, maximum=self.maximum)

    async def failed(
        self, trigger: ActiveTrigger, error: Exception, event: Any, backoff: Backoff
    ) -> bool:
        """Take ``error``, which ended an attempt: ``False`` when it ended the last one (the
        event is then to be dead-lettered); else ``True`` once the next one may begin. An
        outage is waited for and not counted; another error is reported, counted (the
        ``backoff``'s :attr:`~sagaz.backoff.Backoff.attempts` are the earlier ones), and
        followed by the backoff's delay; a value the store cannot keep
        (:class:`~sagaz.exceptions.UnstorableValueError`) fails every attempt alike, so it
        ends the first."""
        if isinstance(error, StoreUnavailableError):  # not this event's doing
            await self.state.outage.wait(error, until=self._closing)
            return True
        await self.settlement.report(trigger, error, event)
        if backoff.attempts + 1 >= self.attempts or isinstance(error, UnstorableValueError):
            return False  # the last attempt, or a value that fails every time: no more
        await backoff.sleep()
        return True

    async def _retry(
        self, held: Held, trigger: ActiveTrigger, event: Any, error: Exception, backoff: Backoff
    ) -> None:
        """Try ``held``, whose attempt ``error`` ended, again after each failure
        (:meth:`failed`) until an attempt goes through; give it up after the last; when
        cancelled (the engine stops), interrupt it."""
        try:
            while await self.failed(trigger, error, event, backoff):
                try:
                    await self._again(held)
                    return
                except Exception as exc:
                    error = exc
            await self._give_up(held, error, backoff.attempts + 1)
        except asyncio.CancelledError:
            await self._interrupted(held, error)
            raise

    async def _again(self, held: Held) -> None:
        """Make ``held``'s next attempt; raises what ends it."""
        raise NotImplementedError

    async def _give_up(self, held: Held, error: Exception, attempts: int) -> None:
        """Dead-letter ``held`` with ``error`` after ``attempts`` and settle it."""
        raise NotImplementedError

    async def _interrupted(self, held: Held, error: Exception) -> None:
        """Hand ``held`` back (nacked): the engine stops."""
        raise NotImplementedError

    async def dead_letter(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        error: Exception,
        saga_id: str | None,
        attempts: int,
    ) -> None:
        """Dead-letter ``delivery`` with ``error`` after ``attempts``, reason
        ``store_error``: tried again until the store has it (nothing is acked before), at the
        backoff's longest delay."""
        settlement = self.settlement
        while True:
            try:
                await settlement.dead_letter(
                    trigger,
                    delivery,
                    reason=STORE_ERROR,
                    error=error,
                    attempts=attempts,
                    saga_id=saga_id,
                )
                return
            except StoreUnavailableError as exc:
                await self.state.outage.wait(exc, until=self._closing)
            except Exception as exc:  # the store takes nothing of it: try again, never ack
                await settlement.report(trigger, exc, delivery.payload)
                await self.state.clock.sleep(self.maximum)

    async def free_key(self, item: WorkItem) -> None:
        """Release ``item``'s inbox row if it is still open (its saga ended, its dead letter
        stored, the row's completion refused), so that no heartbeat of this worker keeps the
        key leased: the event's next delivery, or a replay of its dead letter, finds its saga
        ended and settles it. A failure is reported: the event is settled all the same."""
        if not item.key or item.inbox_completed:
            return
        store = self.state.store
        try:
            await self.state.outage.retry(
                functools.partial(store.release_inbox, item.trigger_id, item.key)
            )
        except Exception as exc:
            await self.settlement.report(item.trigger, exc, item.event)

    async def close(self) -> None:
        """Stop holding (those deliveries are nacked)."""
        self._closing.set()
        await self._tasks.close()


class StoreErrors(HeldEvents[Candidate]):
    """The tasks holding events whose admission a store error interrupted (see the module)."""

    def __init__(
        self,
        state: PipelineState,
        not_started: NotStarted,
        readmit: Callable[[Candidate], Awaitable[object]],
    ) -> None:
        super().__init__(state, not_started.settlement)
        self.not_started = not_started
        self._readmit = readmit  # raises what the store raises

    async def hold(self, c: Candidate, error: Exception) -> AdmissionResult:
        """Hold ``c``, whose admission ``error`` (from the store) interrupted, and admit it
        again in a task of its own (``c.handed_over`` set: its callers leave its delivery
        alone); while the engine stops, nack it instead."""
        if self.stopping:
            await self._interrupted(c, error)
            return AdmissionResult(AdmissionOutcome.REJECTED, error="the engine is stopping")
        c.handed_over = True
        retry = self._retry(c, c.trigger, c.delivery.payload, error, self.backoff())
        self._tasks.spawn(retry, f"sagaz-readmit-{c.saga_id}")
        return AdmissionResult(AdmissionOutcome.BUSY, c.saga_id)

    async def _again(self, c: Candidate) -> None:
        await self._readmit(c)

    async def _interrupted(self, c: Candidate, error: Exception) -> None:
        self.interrupted.append(c.saga_id)
        await self.settlement.nack(c.trigger, c.delivery)

    async def _give_up(self, c: Candidate, error: Exception, attempts: int) -> None:
        trigger, delivery, settlement = c.trigger, c.delivery, self.settlement
        await self.dead_letter(trigger, delivery, error, c.saga_id, attempts)
        try:  # its claim undone, if ours: a saga that started keeps its row (its dead letter
            # resumes it), and a key another worker holds (a busy key's claim failed) is theirs
            saga = await self.state.store.get_saga(c.saga_id)
            if saga is None or (
                saga.status is SagaStatus.PENDING and saga.owner == self.state.worker_id
            ):
                await self.not_started.unclaim(c, saga, complete=False)
        except Exception as exc:  # the dead letter is stored: the event is settled all the same
            await settlement.report(trigger, exc, delivery.payload)
        await settlement.filtered(trigger, c.event, Reason.INVALID)
        await settlement.ack(trigger, delivery)
