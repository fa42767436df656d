"""How an engine acts on operators' saga requests (:mod:`sagaz.engine.steering`).

Every ``TriggerConfig.saga_control_interval_seconds`` (at once when this process asked) the
engine reads the open requests of its store:

* a **cancel** of a saga running here sets its :class:`~sagaz.saga.cancellation.Cancellation`
  (the run stops before its next step); one for a saga not running here is remembered, so
  the saga starts cancelled if it starts here. A compensated saga whose retry waits here for
  its backoff is retried at once, and that run starts cancelled (no step runs). Once the
  saga has ended, the request is finished and the history says how (``cancelled``, or
  ``cancel_missed`` when it ended otherwise first).
* a **resume** or **retry** of a finished saga of a trigger this engine runs: the engine
  claims the saga (its lease: one engine takes it up), forgets the checkpoints of the steps
  that run again, stores the saga as ``running`` with its attempt counted up, and queues it;
  the runner resumes it from its checkpoints. A compensated saga with retries left is left
  to the runner's own retry, which counts as the new attempt, unless that retry is overdue.
  The request stays open until the new attempt ends, so an engine that dies meanwhile
  leaves it to the others: the recovery loop resumes the saga of a webhook, cron, file,
  memory or poll trigger, and this watch that of a broker trigger (whose event was acked
  already, so no redelivery brings it back).

Engines act only on sagas of triggers they run; others leave the request to the engines of
that application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.steering import (
    CANCEL_MISSED,
    CANCELLED,
    FINISHED,
    REFUSED,
    RESUMED,
    RETRIED,
    steps_to_rerun,
)
from sagaz.engine.work_item import WorkItem
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import SagaControlError, StoreUnavailableError
from sagaz.records import SagaAction, SagaControlRequest, SagaHistoryRecord, SagaRecord
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["SagaSteering"]

logger = logging.getLogger(__name__)

#: requests read per pass (the oldest first; the rest in the next passes)
REQUESTS_PER_PASS = 500


class SagaSteering:
    """The watch of one engine over the operators' requests in its store."""

    def __init__(self, state: PipelineState, triggers: Mapping[str, ActiveTrigger]) -> None:
        self.state = state
        self.triggers = triggers
        self._wake = asyncio.Event()
        state.cancellations.on_end = self._wake.set

    def notice(self, request: SagaControlRequest) -> None:
        """A request was just written in this process: act on it now."""
        if request.action is SagaAction.CANCEL:  # stop a saga running here at once
            self.state.cancellations.cancel(request.saga_id, request.actor, request.reason)
        self._wake.set()

    async def watch(self) -> None:
        """Read the requests every ``saga_control_interval_seconds`` (real time, as the
        leases the resumes are claimed with) and act on them, until cancelled."""
        state = self.state
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(state.config.saga_control_interval_seconds):
                    await self._wake.wait()
            self._wake.clear()
            if not state.outage.available:
                continue  # the outage is known and logged; its probe watches the store
            try:
                await self.poll_once()
            except StoreUnavailableError as exc:
                state.outage.down(exc)
            except NotImplementedError as exc:
                logger.warning(
                    "the store keeps no saga requests (%s): sagaz sagas cancel|resume|retry "
                    "do not reach this engine",
                    exc,
                    extra={"worker_id": state.worker_id},
                )
                return
            except Exception:
                logger.exception("acting on saga requests failed")

    async def poll_once(self) -> None:
        """Read the open requests once and act on each."""
        store = self.state.store
        requests = await store.list_saga_requests(limit=REQUESTS_PER_PASS)
        cancels = {r.saga_id for r in requests if r.action is SagaAction.CANCEL}
        self.state.cancellations.keep_only(cancels)
        for request in requests:
            if request.action is SagaAction.CANCEL:
                await self._cancel(request)
            else:
                await self._rerun(request)

    # -- cancel ---------------------------------------------------------------------------------
    async def _cancel(self, request: SagaControlRequest) -> None:
        saga_id = request.saga_id
        if self.state.cancellations.cancel(saga_id, request.actor, request.reason):
            return  # running here: it stops before its next step; finished once it ended
        record = await self.state.store.get_saga(saga_id)
        if record is None:
            await self._finish(request, REFUSED, "no such saga")
        elif record.status in TERMINAL_SAGA_STATUSES:
            if record.status is SagaStatus.COMPENSATED:
                active = self.triggers.get(record.trigger_id or "")
                if active is None or self._retry_due(record, active):
                    # the engine whose runner waits to retry it wakes the retry, which starts
                    # cancelled; the engines of its trigger know whether a retry is left
                    return
            if record.status is SagaStatus.CANCELLED:
                await self._finish(request, CANCELLED, record.error)
            else:
                await self._finish(
                    request,
                    CANCEL_MISSED,
                    f"the saga ended {record.status.value} before it reached a step boundary",
                )
        # else: queued or running elsewhere, or waiting for recovery: cancelled where it runs

    # -- resume and retry -----------------------------------------------------------------------
    async def _rerun(self, request: SagaControlRequest) -> None:
        record = await self.state.store.get_saga(request.saga_id)
        if record is None:
            await self._finish(request, REFUSED, "no such saga")
            return
        under_way = record.attempt > request.attempt
        if record.status in TERMINAL_SAGA_STATUSES:
            if under_way:  # the new attempt has ended
                detail = f"attempt {record.attempt} ended {record.status.value}"
                if record.error:
                    detail += f": {record.error}"
                await self._finish(request, FINISHED, detail)
                return
            active = self.triggers.get(record.trigger_id or "")
            if (
                active is not None
                and not self.state.cancellations.running(record.saga_id)
                and not self._retry_due(record, active)
            ):
                await self._take_up(request, record, active)
            return
        active = self.triggers.get(record.trigger_id or "")
        if (
            under_way
            and active is not None
            and active.source is not None
            and active.source.redeliverable  # the recovery loop resumes the others
            and (record.lease_expires_at is None or record.lease_expires_at < utcnow())
            and not self.state.cancellations.running(record.saga_id)
            and await self.state.store.claim_saga(
                record.saga_id, self.state.worker_id, self.state.lease_until()
            )
        ):
            self._enqueue(active, record)

    def _retry_due(self, record: SagaRecord, active: ActiveTrigger) -> bool:
        """Whether the runner of the engine that ran ``record`` retries it by itself soon
        (a compensated saga with retries left, within its backoff): that new attempt is the
        one the request asked for, and taking the saga up too would run it twice. Once the
        retry is overdue (its engine died), the request is taken up."""
        if record.status is not SagaStatus.COMPENSATED or record.attempt > active.max_retries:
            return False
        config = self.state.config
        wait = active.backoff(record.attempt) * (1 + config.retry_jitter) + config.lease_seconds
        since = record.updated_at or utcnow()
        return utcnow() < since + timedelta(seconds=wait)

    async def _take_up(
        self, request: SagaControlRequest, record: SagaRecord, active: ActiveTrigger
    ) -> None:
        state = self.state
        store = state.store
        lease = state.lease_until()
        if not await store.claim_saga(record.saga_id, state.worker_id, lease):
            return  # another engine takes it up
        definition = active.definition.saga_cls.definition()
        try:
            again = steps_to_rerun(
                record.saga_id, definition, await store.get_steps(record.saga_id), request.step
            )
        except SagaControlError as exc:
            await self._finish(request, REFUSED, str(exc))
            return
        # forget the steps first: a crash before the saga is saved leaves it as it was, and
        # the engine that takes the request up next computes the same steps
        await store.delete_steps(record.saga_id, again)
        record.status = SagaStatus.RUNNING
        record.attempt += 1
        record.error = None
        record.owner = state.worker_id
        record.lease_expires_at = lease
        await store.save_saga(record)
        retry = request.action is SagaAction.RETRY
        await store.add_saga_history(
            SagaHistoryRecord(
                record.saga_id,
                RETRIED if retry else RESUMED,
                state.worker_id,
                f"attempt {record.attempt}; runs again: {', '.join(again) or 'no step'}",
            )
        )
        logger.info(
            "%s saga %s (attempt %d) for %s",
            "retrying" if retry else "resuming",
            record.saga_id,
            record.attempt,
            request.actor,
            extra={"saga_id": record.saga_id, "trigger": active.trigger_id},
        )
        self._enqueue(active, record)

    def _enqueue(self, active: ActiveTrigger, record: SagaRecord) -> None:
        """Queue the saga (stored as running, leased here): the runner resumes it from its
        checkpoints, as the recovery loop's sagas."""
        state = self.state
        item = WorkItem(
            trigger=active,
            delivery=Delivery(
                payload=record.event,
                decoded=True,
                identity="",
                meta=EventMeta(source="operator", trigger=active.trigger_id),
            ),
            key="",  # its inbox row was settled when the saga ended the first time
            saga_id=record.saga_id,
            context=dict(record.context),
            attempt=record.attempt,
            accepted_at=state.clock.monotonic(),
            saga=active.saga_for_run(),
        )
        state.outcomes.accepted(record.saga_id)
        state.cancellations.watch(record.saga_id)  # its request is finished once it ends
        state.queue.put_nowait_unbounded(item)

    async def _finish(self, request: SagaControlRequest, action: str, detail: str | None) -> None:
        """Finish the request; the one engine that does writes the history entry."""
        store = self.state.store
        if await store.finish_saga_request(request.saga_id, request.action):
            await store.add_saga_history(
                SagaHistoryRecord(request.saga_id, action, self.state.worker_id, detail)
            )
