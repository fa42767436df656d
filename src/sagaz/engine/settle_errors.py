"""Sagas that reached a terminal state whose event an error of the store (not an outage) kept
from being settled, held and settled again (:class:`SettleErrors`).

Once a saga has ended, its event is settled: its dead letter stored when it is due (a saga
that failed, or whose retries are exhausted), its inbox row completed (and a poll trigger's
execution row closed), then its delivery acked. An outage
(:class:`~sagaz.exceptions.StoreUnavailableError`) meanwhile is waited for where it happens
(:mod:`sagaz.engine.store_outage`). Any other error of one of those writes (a refused
statement, a value the store cannot encode, a bug in a store) reached the dispatcher, which
nacked the delivery: RabbitMQ and SQS delivered the event again at once, for as long as the
error lasted (a hot loop: each redelivery found the saga ended and failed to settle it
again), a Kafka partition's commits stopped at its offset, and the event of a source that
does not redeliver (``fire_event``, a webhook, cron) was never settled.

So the delivery is held, neither acked nor nacked, as a run's is
(:mod:`sagaz.engine.run_errors`: the same policy,
:class:`~sagaz.engine.store_errors.HeldEvents`), and what is left of the settling (the dead
letter, if the store has not taken it yet, then the inbox row and the ack) is tried again
after the backoff; an outage meanwhile is waited for and not counted, each failure is
reported (``on_trigger_error``, counted in ``source_errors``). After
:attr:`SettleErrors.attempts` failed attempts (the first included), or after the first when
its error is a value the store cannot keep
(:class:`~sagaz.exceptions.UnstorableValueError`), the event is given up:

* an event that has no dead letter yet (its saga completed, or was cancelled, or its own dead
  letter is what the store refused) is dead-lettered with the last error and its traceback
  (reason ``store_error``), tried again at the backoff's longest delay until the store has it:
  nothing is acked before, however long that takes;
* an inbox row still open is released (:meth:`~sagaz.abc.SagaStore.release_inbox`), so that no
  heartbeat of this worker keeps the key leased: the event's next delivery, or a replay of its
  dead letter, finds its saga ended and settles it;
* the delivery is acked.

While the engine stops, a held delivery is nacked (redelivered: its saga ended, so that
delivery only settles it).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sagaz.engine.active_trigger import PipelineState
from sagaz.engine.settlement import Settlement
from sagaz.engine.store_errors import HeldEvents
from sagaz.engine.work_item import WorkItem
from sagaz.exceptions import StoreUnavailableError
from sagaz.saga.result import SagaResult

__all__ = ["SettleErrors", "Unsettled"]


@dataclass(slots=True, eq=False)
class Unsettled:
    """The event of a saga that ended (``result``), still to be settled."""

    item: WorkItem
    result: SagaResult
    #: stores its dead letter, while the store has not taken it (``None``: none is due, or
    #: it is stored)
    dead_letter: Callable[[], Awaitable[object]] | None = None
    #: its dead letter is stored: the durable record of the event
    dead_lettered: bool = False


class SettleErrors(HeldEvents[Unsettled]):
    """The tasks holding the deliveries of sagas that ended whose settling a store error
    interrupted (see the module). ``settle`` completes what the store still holds open for an
    item, then acks it (the runner's)."""

    def __init__(
        self,
        state: PipelineState,
        settlement: Settlement,
        settle: Callable[[WorkItem], Awaitable[None]],
    ) -> None:
        super().__init__(state, settlement)
        self._settle = settle

    async def settle(self, unsettled: Unsettled) -> None:
        """Settle ``unsettled`` (its dead letter first, if one is due), waiting out each
        outage; hold it if another error of the store interrupts that."""
        try:
            await self.state.outage.retry(functools.partial(self._again, unsettled))
        except Exception as exc:
            await self.hold(unsettled, exc)

    async def failed_first(self, unsettled: Unsettled, error: Exception) -> None:
        """Take ``error``, which ended the first attempt to settle ``unsettled`` (the
        runner's, made without :meth:`settle`): an outage is waited out and the settling
        goes on (:meth:`settle`); another error holds it."""
        if isinstance(error, StoreUnavailableError):
            await self.state.outage.wait(error)
            await self.settle(unsettled)
        else:
            await self.hold(unsettled, error)

    async def hold(self, unsettled: Unsettled, error: Exception) -> None:
        """Hold ``unsettled``, whose settling ``error`` interrupted, and settle it again after
        the backoff in a task of its own; give it up after the last attempt; while the engine
        stops, nack it instead."""
        if self.stopping:
            await self._interrupted(unsettled, error)
            return
        item = unsettled.item
        retry = self._retry(unsettled, item.trigger, item.event, error, self.backoff())
        self._tasks.spawn(retry, f"sagaz-settle-{item.saga_id}")

    async def _again(self, unsettled: Unsettled) -> None:
        """What is left of the settling: the dead letter, if the store has not taken it yet,
        then the store's rows and the ack; then the saga's outcome."""
        if unsettled.dead_letter is not None:
            await unsettled.dead_letter()
            unsettled.dead_letter, unsettled.dead_lettered = None, True  # never written twice
        item = unsettled.item
        await self._settle(item)
        self.state.outcomes.settle(item.saga_id, unsettled.result)

    async def _give_up(self, unsettled: Unsettled, error: Exception, attempts: int) -> None:
        """Dead-letter ``unsettled`` with ``error`` after ``attempts`` unless its own dead
        letter is stored, free its key, ack its delivery."""
        item = unsettled.item
        trigger, settlement = item.trigger, self.settlement
        if not unsettled.dead_lettered:  # no durable record of the event yet
            await self.dead_letter(trigger, item.delivery, error, item.saga_id, attempts)
        await self.free_key(item)  # not left leased by this worker
        await settlement.ack(trigger, item.delivery)
        self.state.outcomes.settle(item.saga_id, unsettled.result)

    async def _interrupted(self, unsettled: Unsettled, error: Exception) -> None:
        item = unsettled.item
        await self.settlement.nack(item.trigger, item.delivery)
        # its saga did end (so says the store): that is its outcome, settled or not
        self.state.outcomes.settle(item.saga_id, unsettled.result)
