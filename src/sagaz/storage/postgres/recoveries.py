"""The takeover of a saga, counted as a recovery attempt (``take_over_saga``).

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from datetime import datetime

from sagaz.clock import utcnow
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import PostgresConnection
from sagaz.storage.sql import claimable, take_over_set

__all__ = ["PostgresRecoveries"]


class PostgresRecoveries(PostgresConnection):
    """The takeover of a saga, counted as a recovery attempt."""

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: datetime) -> int | None:
        # claim_saga's statement, counted: one row update, so the claim and the count are one
        count = await self._write_fetchval(
            f"UPDATE {self._s}.saga_executions SET {take_over_set('$2')}, lease_expires_at = $3 "
            f"WHERE saga_id = $1 AND {claimable('$2', '$4')} RETURNING recovery_attempts",
            saga_id,
            owner,
            to_utc(lease_until),
            utcnow(),
        )
        return None if count is None else int(count)
