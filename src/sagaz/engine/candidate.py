"""An event on its way through admission (:class:`Candidate`) and its identity
(:func:`identify`), shared by admission and by what becomes of an event that starts no saga
(:mod:`sagaz.engine.not_started`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sagaz.engine.active_trigger import ActiveTrigger
from sagaz.engine.identity import dedup_key
from sagaz.events import Delivery

__all__ = ["Candidate", "identify"]


def identify(trigger: ActiveTrigger, delivery: Delivery, event: Any) -> tuple[str, Any]:
    """The inbox key and the concurrency key of ``event``; a delivery without an identity
    takes its key as one (its dead letter, or its pending row, gives it back)."""
    key = dedup_key(trigger, delivery, event)
    if not delivery.identity:
        delivery.identity = key
    definition = trigger.definition
    return key, definition.concurrency_key(event) if definition.concurrency_key else None


@dataclass(slots=True)
class Candidate:
    """An event on its way through admission, with its identity."""

    trigger: ActiveTrigger
    delivery: Delivery
    event: Any
    key: str
    saga_id: str
    concurrency_key: Any
    #: done once the delivery before it in its batch is admitted (``admit_many``)
    after: asyncio.Future[None] | None = None
    #: its acceptance, cancelled after its claim, is finished by a task of its own
    #: (:class:`~sagaz.engine.late_acceptances.LateAcceptances`): not to be nacked
    handed_over: bool = False
