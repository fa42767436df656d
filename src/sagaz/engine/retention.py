"""The purge loop: deletes what is older than ``event_retention_days`` and
``saga_retention_days``.

Every ``cleanup_interval_seconds``: completed inbox rows, stored events of finished sagas,
finished poll-trigger executions, cron claims (each trigger keeps its newest tick), expired
named leases and full token buckets (:meth:`~sagaz.abc.SagaStore.purge_expired`); then
finished sagas with their steps, history and outbox messages, batch after batch
(:meth:`~sagaz.abc.SagaStore.purge_sagas`), so no purge holds a long transaction.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import PipelineState
from sagaz.exceptions import StoreUnavailableError

__all__ = ["SAGA_PURGE_BATCH", "purge_expired", "purge_finished_sagas"]

logger = logging.getLogger(__name__)

SAGA_PURGE_BATCH = 500
"""Finished sagas deleted per store call (one short transaction each)."""


async def purge_expired(state: PipelineState) -> None:
    """Purge the store every ``cleanup_interval_seconds``, until cancelled."""
    config = state.config
    outage = state.outage
    sagas_purgeable = True
    while True:
        await outage.wait_available()
        try:
            before = utcnow() - timedelta(days=config.event_retention_days)
            await state.store.purge_expired(before)
            if config.saga_retention_days is not None and sagas_purgeable:
                sagas_purgeable = await purge_finished_sagas(state, config.saga_retention_days)
        except StoreUnavailableError as exc:
            outage.down(exc)
        except Exception:
            logger.exception("purging expired events failed")
        # real time, like the utcnow() that retention is measured from
        await asyncio.sleep(config.cleanup_interval_seconds)


async def purge_finished_sagas(state: PipelineState, retention_days: float) -> bool:
    """Delete the sagas that finished more than ``retention_days`` ago, one batch after
    another until a batch comes back short; ``False`` when the store cannot purge sagas."""
    before = utcnow() - timedelta(days=retention_days)
    while True:
        try:
            deleted = await state.store.purge_sagas(before, limit=SAGA_PURGE_BATCH)
        except NotImplementedError:
            logger.warning(
                "%s cannot purge finished sagas: they are kept whatever "
                "saga_retention_days says (implement SagaStore.purge_sagas)",
                type(state.store).__name__,
            )
            return False
        if deleted:
            logger.debug("purged %d finished sagas", deleted)
        if deleted < SAGA_PURGE_BATCH:
            return True
        await asyncio.sleep(0)  # let the pipeline's own store calls in between batches
