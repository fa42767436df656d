"""``WorkItem``: one admitted event on its way from the queue to its saga."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagaz.events import Delivery
from sagaz.records import SagaRecord

if TYPE_CHECKING:
    from sagaz.engine.active_trigger import ActiveTrigger
    from sagaz.saga.definition import Saga

__all__ = ["WorkItem"]


@dataclass(slots=True, eq=False)
class WorkItem:
    """An accepted event: its trigger, delivery, identity and starting context."""

    trigger: ActiveTrigger
    delivery: Delivery
    key: str
    saga_id: str
    context: dict[str, Any]
    event: Any = None
    concurrency_key: Hashable | None = None
    attempt: int = 1
    accepted_at: float = 0.0  # clock.monotonic() at admission (start-latency metric)
    seq: int = 0
    evicted: bool = False
    context_hash: str | None = None  # poll triggers: the execution row to close
    pending: SagaRecord | None = None  # the PENDING row admission created (first attempt)
    new_attempt: bool = False  # a retry: the runner starts attempt ``attempt`` afresh
    already_terminal: bool = False  # a redelivery of a saga that already finished
    rate_granted: bool = False  # its trigger's rate-limit token is taken (see BackpressureQueue)
    saga: Saga | None = None  # the saga object of this run (None: the trigger's shared one)
    # limit_scope="cluster" (see BackpressureQueue and ClusterLimits)
    key_reserved: bool = False  # its concurrency key is taken here while it waits for the store
    key_leased: bool = False  # its concurrency key's lease in the store is held for it
    cluster_ready: bool = False  # every cluster limit let it start
    #: the leases held for it (a tuple: no list per event when there is none)
    cluster_leases: tuple[str, ...] = ()
    cluster_holder: str | None = None  # the holder of those leases
    inbox_completed: bool = False  # its inbox row was completed with the completed saga

    @property
    def trigger_id(self) -> str:
        """Id of the trigger that admitted the event."""
        return self.trigger.trigger_id
