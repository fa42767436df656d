"""The lease heartbeat: keeps the leases of a worker's claims alive while its engine runs;
and what a graceful stop does with them (:func:`release_leases`).

A claim (inbox row, saga, cluster-limit slot) is held until ``lease_seconds`` after its last
renewal; a worker that dies stops renewing, and another takes its claims over. A worker that
stops gracefully gives its unfinished sagas back instead: their next claim is no recovery
attempt (:mod:`sagaz.engine.recovery_attempts`), so a rolling deploy never counts as a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.exceptions import StoreUnavailableError

__all__ = ["GIVE_BACK_SECONDS", "release_leases", "renew_leases"]

logger = logging.getLogger(__name__)

#: how long a stop gives its unfinished sagas back before it leaves the rest to their leases
GIVE_BACK_SECONDS = 5.0


async def renew_leases(state: PipelineState, triggers: Mapping[str, ActiveTrigger]) -> None:
    """Renew this worker's leases every third of ``lease_seconds``, until cancelled: those of
    its claims in the store and of the cluster limits of ``triggers``.

    A renewal starts a third of a lease after the previous one started, not after it ended:
    a lease renewed at ``t`` ends at ``t + lease_seconds``, and a renewal that takes a while
    (its write queued behind others', a loaded machine) must not push the next one towards
    that end, where another worker would take a live worker's claims over (and the two would
    take a saga from each other, each run repeating its step). One slower than a third of a
    lease is followed by the next at once; none is made up for after a pause of the
    process (its leases lapsed meanwhile whatever it does)."""
    interval = state.config.lease_seconds / 3
    loop = asyncio.get_running_loop()
    due = loop.time() + interval  # real time, as leases are (PipelineState.lease_until)
    while True:
        await asyncio.sleep(due - loop.time())
        due = loop.time() + interval
        if not state.outage.available:
            continue  # the outage's probe renews them when the store is back
        try:
            await state.store.renew_leases(state.worker_id, state.lease_until())
            for active in triggers.values():
                if active.cluster is not None:
                    await active.cluster.renew()
        except StoreUnavailableError as exc:
            state.outage.down(exc)
        except Exception:
            logger.exception("renewing leases failed", extra={"worker_id": state.worker_id})


async def release_leases(state: PipelineState, unfinished: Iterable[str]) -> None:
    """A graceful stop's end, once no saga runs here any more: give back each saga of
    ``unfinished`` (:meth:`~sagaz.abc.SagaStore.release_saga`, fenced by owner: a saga
    another worker holds, or that ended, stays as it is), so the worker that claims it next
    counts no recovery attempt; then end every lease this worker still holds (its inbox rows,
    a saga not given back) now, so another worker takes its claims over at once.

    Errors are logged, never raised, and the sagas are given back for
    :data:`GIVE_BACK_SECONDS` at most: a stop must finish. A saga not given back keeps this
    worker as its owner, so its next claim counts, as after a crash."""
    worker = state.worker_id
    sagas = list(dict.fromkeys(unfinished))  # once each, in order: the runs cut short first
    given = 0
    try:
        async with asyncio.timeout(GIVE_BACK_SECONDS):
            for saga_id in sagas:
                try:
                    await state.store.release_saga(saga_id, worker)
                except Exception:
                    logger.exception(
                        "giving back saga %s failed: its next claim counts a recovery attempt",
                        saga_id,
                        extra={"saga_id": saga_id, "worker_id": worker},
                    )
                given += 1
    except TimeoutError:
        logger.warning(
            "giving back %d unfinished saga(s) took over %ss: %d left to their leases (their "
            "next claims count a recovery attempt)",
            len(sagas),
            GIVE_BACK_SECONDS,
            len(sagas) - given,
            extra={"worker_id": worker},
        )
    try:  # let a restarted worker take over the claims left at once
        await state.store.renew_leases(worker, utcnow() - timedelta(seconds=1))
    except Exception:
        logger.exception("releasing leases failed", extra={"worker_id": worker})
