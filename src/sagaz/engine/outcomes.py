"""``SagaOutcomes``: how the sagas of accepted events ended, for ``TriggerEngine.wait_for``.

Every saga id the engine accepted gets exactly one outcome here: the ``SagaResult`` of its run,
or a :class:`~sagaz.events.NotRun` naming why there is none (evicted under ``drop_oldest``,
interrupted by shutdown or a store failure). So a caller waiting on a saga id that
``fire_event`` returned is always answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
from collections import OrderedDict
from typing import Any

from sagaz.events import NotRun
from sagaz.saga.result import SagaResult
from sagaz.storage.rows import freeze, thaw
from sagaz.types import SagaStatus

__all__ = ["SagaOutcome", "SagaOutcomes"]

#: what :meth:`SagaOutcomes.wait` answers
SagaOutcome = SagaResult | NotRun

#: a kept ``SagaResult`` as a tuple of its fields after ``saga_id``: the status as its value,
#: the context and the compensation errors as :func:`~sagaz.storage.rows.freeze` keeps them
#: (``marshal`` bytes). The collector stops tracking a tuple once nothing in it is a
#: container (an untracked dict still counts as one), so the last ``keep`` outcomes are
#: not promoted to the oldest generation, where each one counted towards the next full
#: collection, as ``SagaResult`` objects were.
_Kept = tuple[str, Any, str | None, str | None, Any, int]


def _keep(outcome: SagaOutcome) -> _Kept | NotRun:
    if type(outcome) is SagaResult:
        context: Any = outcome.context
        try:  # freeze() of a dict without the call: once per saga
            context = marshal.dumps(context)
        except ValueError:  # an object somewhere inside
            context = freeze(context)
        return (
            outcome.status._value_,
            context,
            outcome.error,
            outcome.failed_step,
            freeze(outcome.compensation_errors) if outcome.compensation_errors else None,
            outcome.attempt,
        )
    return outcome  # type: ignore[return-value]  # NotRun: rare, kept as it is


def _outcome(saga_id: str, kept: _Kept | NotRun) -> SagaOutcome:
    if type(kept) is tuple:
        status, context, error, failed_step, compensation_errors, attempt = kept
        errors = {} if compensation_errors is None else thaw(compensation_errors)
        return SagaResult(
            saga_id, SagaStatus(status), thaw(context), error, failed_step, errors, attempt
        )
    return kept  # type: ignore[return-value]


class SagaOutcomes:
    """The latest ``keep`` outcomes by saga id, and the callers waiting for one."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._recent: OrderedDict[str, _Kept | NotRun] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[SagaOutcome]]] = {}
        self._interrupted = False

    def accepted(self, saga_id: str) -> None:
        """``saga_id`` is accepted (again): an outcome recorded before is not this one's."""
        self._recent.pop(saga_id, None)

    def settle(self, saga_id: str, outcome: SagaOutcome) -> None:
        """Record the outcome of ``saga_id`` and answer whoever waits for it."""
        recent = self._recent
        if saga_id in recent:  # (``accepted`` removed it: new ones go to the end anyway)
            recent.move_to_end(saga_id)
        recent[saga_id] = _keep(outcome)
        if len(recent) > self.keep:
            recent.popitem(last=False)
        if self._waiters:
            for waiter in self._waiters.pop(saga_id, ()):
                if not waiter.done():
                    waiter.set_result(outcome)

    async def wait(self, saga_id: str, timeout: float | None = None) -> SagaOutcome:
        """The outcome of ``saga_id``, once there is one (``TimeoutError`` after ``timeout``)."""
        known = self._recent.get(saga_id)
        if known is not None:
            return _outcome(saga_id, known)
        if self._interrupted:
            return NotRun(saga_id, "interrupted")
        future: asyncio.Future[SagaOutcome] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(saga_id, [])
        waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:  # answered, timed out or cancelled: forget this caller
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters and self._waiters.get(saga_id) is waiters:
                del self._waiters[saga_id]

    def interrupt(self) -> None:
        """The engine stopped: answer every waiter (and later ones) ``NotRun("interrupted")``
        for a saga whose outcome it does not know."""
        self._interrupted = True
        waiting, self._waiters = self._waiters, {}
        for saga_id, waiters in waiting.items():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(NotRun(saga_id, "interrupted"))

    def resume(self) -> None:
        """The engine started (again): wait for outcomes instead of answering "interrupted"."""
        self._interrupted = False
