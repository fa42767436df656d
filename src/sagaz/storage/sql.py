"""SQL shared by the PostgreSQL and SQLite stores: status lists and the column lists of the
tables both schemas lay out the same way."""

from __future__ import annotations

from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["ACTIVE_SQL", "OUTBOX_COLUMNS", "SAGA_COLUMNS", "STEP_COLUMNS", "TERMINAL_SQL"]

TERMINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_SAGA_STATUSES)) + ")"
"""SQL list of the terminal saga statuses (``IN`` clauses and partial indexes)."""
ACTIVE_SQL = (
    "(" + ", ".join(f"'{s.value}'" for s in sorted(set(SagaStatus) - TERMINAL_SAGA_STATUSES)) + ")"
)
"""SQL list of the non-terminal saga statuses."""

SAGA_COLUMNS = (
    "saga_id, saga_name, status, context, attempt, error, trigger_id, event, owner, "
    "lease_expires_at, created_at, updated_at"
)
STEP_COLUMNS = (
    "saga_id, name, status, result, error, attempts, completed_seq, compensation_error, updated_at"
)
OUTBOX_COLUMNS = "id, saga_id, topic, payload, headers, created_at, sent_at"
