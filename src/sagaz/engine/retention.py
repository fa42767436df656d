"""The purge loop: deletes what is older than ``event_retention_days``,
``saga_retention_days`` and ``dead_letter_retention_days``.

Every ``cleanup_interval_seconds``: completed inbox rows, stored events of finished sagas,
finished poll-trigger executions, cron claims (each trigger keeps its newest tick), expired
named leases and full token buckets (:meth:`~sagaz.abc.SagaStore.purge_expired`); then
finished sagas with their steps, history and outbox messages
(:meth:`~sagaz.abc.SagaStore.purge_sagas`) and old dead letters
(:meth:`~sagaz.abc.SagaStore.purge_dead_letters`), batch after batch, so no purge holds a long
transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import PipelineState
from sagaz.exceptions import StoreUnavailableError

__all__ = ["PURGE_BATCH", "Purge", "purge_expired", "purge_in_batches"]

logger = logging.getLogger(__name__)

Purge = Callable[..., Awaitable[int]]
"""``SagaStore.purge_sagas`` or ``SagaStore.purge_dead_letters``: ``(before, *, limit)``."""

PURGE_BATCH = 500
"""Finished sagas (or dead letters) deleted per store call (one short transaction each)."""


async def purge_expired(state: PipelineState) -> None:
    """Purge the store every ``cleanup_interval_seconds``, until cancelled."""
    config = state.config
    outage = state.outage
    store = state.store
    # what the store cannot purge (a store written for an older sagaz) is not asked again
    ages: dict[str, tuple[Purge, float | None]] = {
        "finished sagas": (store.purge_sagas, config.saga_retention_days),
        "dead letters": (store.purge_dead_letters, config.dead_letter_retention_days),
    }
    while True:
        await outage.wait_available()
        try:
            before = utcnow() - timedelta(days=config.event_retention_days)
            await state.store.purge_expired(before)
            for what, (purge, days) in list(ages.items()):
                if days is not None and not await purge_in_batches(purge, what, days):
                    del ages[what]
        except StoreUnavailableError as exc:
            outage.down(exc)
        except Exception:
            logger.exception("purging expired events failed")
        # real time, like the utcnow() that retention is measured from
        await asyncio.sleep(config.cleanup_interval_seconds)


async def purge_in_batches(purge: Purge, what: str, retention_days: float) -> bool:
    """Delete with ``purge`` (``store.purge_sagas`` or ``store.purge_dead_letters``) the
    ``what`` older than ``retention_days``, one batch after another until a batch comes back
    short; ``False`` when the store cannot purge them."""
    before = utcnow() - timedelta(days=retention_days)
    total = 0
    while True:
        try:
            deleted = await purge(before, limit=PURGE_BATCH)
        except NotImplementedError:
            logger.warning(
                "the store cannot purge %s by age: they are kept (implement SagaStore.%s)",
                what,
                purge.__name__,
            )
            return False
        total += deleted
        if deleted < PURGE_BATCH:
            break
        await asyncio.sleep(0)  # let the pipeline's own store calls in between batches
    if total:
        # dead letters are for people: say when some are gone
        level = logging.INFO if what == "dead letters" else logging.DEBUG
        logger.log(level, "purged %d %s older than %s days", total, what, retention_days)
    return True
