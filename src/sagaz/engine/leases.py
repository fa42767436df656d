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
