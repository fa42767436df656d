"""The purge loop: deletes what is older than ``event_retention_days``.

Completed inbox rows, stored events of finished sagas, finished poll-trigger executions, and
cron claims (each trigger keeps its newest tick).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import PipelineState
from sagaz.exceptions import StoreUnavailableError

__all__ = ["purge_expired"]

logger = logging.getLogger(__name__)


async def purge_expired(state: PipelineState) -> None:
    """Purge the store every ``cleanup_interval_seconds``, until cancelled."""
    config = state.config
    outage = state.outage
    while True:
        await outage.wait_available()
        try:
            before = utcnow() - timedelta(days=config.event_retention_days)
            await state.store.purge_expired(before)
        except StoreUnavailableError as exc:
            outage.down(exc)
        except Exception:
            logger.exception("purging expired events failed")
        # real time, like the utcnow() that retention is measured from
        await asyncio.sleep(config.cleanup_interval_seconds)
