"""The lease heartbeat: keeps the leases of a worker's claims alive while its engine runs.

A claim (inbox row, saga, cluster-limit slot) is held until ``lease_seconds`` after its last
renewal; a worker that dies stops renewing, and another takes its claims over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.exceptions import StoreUnavailableError

__all__ = ["renew_leases"]

logger = logging.getLogger(__name__)


async def renew_leases(state: PipelineState, triggers: Mapping[str, ActiveTrigger]) -> None:
    """Renew this worker's leases every third of ``lease_seconds``, until cancelled: those of
    its claims in the store and of the cluster limits of ``triggers``."""
    interval = state.config.lease_seconds / 3
    while True:
        await asyncio.sleep(interval)  # real time, as leases are (PipelineState.lease_until)
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
