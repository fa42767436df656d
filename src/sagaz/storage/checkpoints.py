"""What one combined checkpoint (:meth:`~sagaz.abc.SagaStore.save_checkpoint`) may hold.

The stores that write a checkpoint in one transaction (memory, SQLite, PostgreSQL) check it
with :func:`check_checkpoint` before they write anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from sagaz.records import OutboxMessage, SagaRecord, StepRecord

__all__ = ["check_checkpoint"]


def check_checkpoint(
    saga: SagaRecord | None, steps: Sequence[StepRecord], outbox: Sequence[OutboxMessage]
) -> None:
    """Raise :class:`ValueError` for outbox messages with neither a saga row nor a step
    checkpoint to be written with (the contract writes them with one of the two)."""
    if saga is None and outbox and not steps:
        raise ValueError("save_checkpoint: outbox messages need a saga or a step to go with")
