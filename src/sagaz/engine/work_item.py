"""``WorkItem``: one admitted event on its way from the queue to its saga."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagaz.engine.identity import storable
from sagaz.events import Delivery
from sagaz.records import SagaRecord
from sagaz.types import SagaStatus

if TYPE_CHECKING:
    from sagaz.backoff import Backoff
    from sagaz.engine.active_trigger import ActiveTrigger
    from sagaz.saga.definition import Saga

__all__ = ["WorkItem"]

#: read once: on Python 3.11 ``SagaStatus.PENDING`` goes through ``EnumType.__getattr__``'s
#: hook (about 0.1 µs), once per event
_PENDING = SagaStatus.PENDING


@dataclass(slots=True, eq=False)
class WorkItem:
    """An accepted event: its trigger, delivery, identity and starting context."""

    trigger: ActiveTrigger
    delivery: Delivery
    key: str
    saga_id: str
    context: dict[str, Any]
    # (admission passes the fields up to ``saga`` by position: keep their order)
    event: Any = None
    concurrency_key: Hashable | None = None
    accepted_at: float = 0.0  # clock.monotonic() at admission (start-latency metric)
    context_hash: str | None = None  # poll triggers: the execution row to close
    pending: SagaRecord | None = None  # the PENDING row admission took over (first attempt)
    #: admission created its PENDING row (first attempt): the runner starts from that row,
    #: rebuilt (:meth:`pending_row`), without reading it back; it is not kept here, since
    #: every object a queued event holds is one more for the garbage collector to walk
    created: bool = False
    new_attempt: bool = False  # a retry: the runner starts attempt ``attempt`` afresh
    saga: Saga | None = None  # the saga object of this run (None: the trigger's shared one)
    attempt: int = 1
    seq: int = 0
    evicted: bool = False
    already_terminal: bool = False  # a redelivery of a saga that already finished
    rate_granted: bool = False  # its trigger's rate-limit token is taken (see BackpressureQueue)
    # limit_scope="cluster" (see BackpressureQueue and ClusterLimits)
    key_reserved: bool = False  # its concurrency key is taken here while it waits for the store
    key_leased: bool = False  # its concurrency key's lease in the store is held for it
    cluster_ready: bool = False  # every cluster limit let it start
    #: the leases held for it (a tuple: no list per event when there is none)
    cluster_leases: tuple[str, ...] = ()
    cluster_holder: str | None = None  # the holder of those leases
    inbox_completed: bool = False  # its inbox row was completed with the completed saga
    #: the backoff between its runs that a store error ended (its ``attempts``: how many);
    #: see :mod:`sagaz.engine.run_errors`
    run_errors: Backoff | None = None

    def pending_row(self, owner: str) -> SagaRecord:
        """The ``PENDING`` row admission created for this event, as the start checkpoint
        writes it over: its event is the one ``persist_events`` keeps (the delivery a
        pending row keeps for recovery is dropped at the start), its lease and
        ``created_at`` are the store's (an update keeps them)."""
        trigger = self.trigger
        event = storable(self.delivery.payload) if trigger.persist_events else None
        # saga_id, saga_name, status, context, attempt, error, trigger_id, event, owner: by
        # position (once per event)
        return SagaRecord(
            self.saga_id,
            trigger.saga_name,
            _PENDING,
            {},
            1,
            None,
            trigger.trigger_id,
            event,
            owner,
        )

    @property
    def trigger_id(self) -> str:
        """Id of the trigger that admitted the event."""
        return self.trigger.trigger_id
