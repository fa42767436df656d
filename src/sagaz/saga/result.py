"""``SagaResult``: what ``Saga.run()`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sagaz._frozen import quick_init
from sagaz.types import SagaStatus

__all__ = ["SagaResult"]


@quick_init  # one per saga: see sagaz._frozen
@dataclass(frozen=True, slots=True)
class SagaResult:
    """The outcome of one saga execution.

    ``status`` is ``completed``, ``compensated`` (a step failed, every compensation ran) or
    ``failed`` (a compensation itself failed: ``compensation_errors`` says which).
    """

    saga_id: str
    status: SagaStatus
    context: dict[str, Any]
    error: str | None = None
    failed_step: str | None = None
    compensation_errors: dict[str, str] = field(default_factory=dict)
    attempt: int = 1

    @property
    def succeeded(self) -> bool:
        """True when the saga completed."""
        return self.status is SagaStatus.COMPLETED
