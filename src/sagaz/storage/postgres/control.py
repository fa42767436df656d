"""Saga control: its history and the open requests of operators.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sagaz.clock import utcnow
from sagaz.records import (
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
)
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import PostgresConnection

__all__ = ["PostgresControl"]


class PostgresControl(PostgresConnection):
    """Saga control: its history and the open requests of operators."""

    # -- saga control ----------------------------------------------------------------------
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        if names:
            await self._db().execute(
                f"DELETE FROM {self._s}.saga_steps WHERE saga_id = $1 AND name = ANY($2::text[])",
                saga_id,
                list(names),
            )

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        entry_id: int = await self._db().fetchval(
            f"INSERT INTO {self._s}.saga_history (saga_id, at, action, actor, detail) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            entry.saga_id,
            to_utc(entry.at) if entry.at is not None else utcnow(),
            entry.action,
            entry.actor,
            entry.detail,
        )
        return entry_id

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        rows = await self._db().fetch(
            f"SELECT id, saga_id, at, action, actor, detail FROM {self._s}.saga_history "
            "WHERE saga_id = $1 ORDER BY id LIMIT $2",
            saga_id,
            limit,
        )
        return [
            SagaHistoryRecord(
                row["saga_id"], row["action"], row["actor"], row["detail"], row["id"], row["at"]
            )
            for row in rows
        ]

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        added = await self._db().fetchval(
            f"INSERT INTO {self._s}.saga_requests (saga_id, action, step, actor, reason, "
            "attempt, requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (saga_id) DO NOTHING RETURNING TRUE",
            request.saga_id,
            SagaAction(request.action).value,
            request.step,
            request.actor,
            request.reason,
            request.attempt,
            to_utc(request.requested_at) if request.requested_at is not None else utcnow(),
        )
        return bool(added)

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        rows = await self._db().fetch(
            "SELECT saga_id, action, step, actor, reason, attempt, requested_at "
            f"FROM {self._s}.saga_requests WHERE ($1::text IS NULL OR saga_id = $1) "
            "ORDER BY requested_at, saga_id LIMIT $2",
            saga_id,
            limit,
        )
        return [
            SagaControlRequest(
                row["saga_id"],
                SagaAction(row["action"]),
                row["step"],
                row["actor"],
                row["reason"],
                row["attempt"],
                row["requested_at"],
            )
            for row in rows
        ]

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        deleted = await self._db().fetchval(
            f"DELETE FROM {self._s}.saga_requests WHERE saga_id = $1 AND action = $2 "
            "RETURNING TRUE",
            saga_id,
            SagaAction(action).value,
        )
        return bool(deleted)
