"""The inbox: claims of trigger keys and their leases (the purge of expired rows is in
:mod:`sagaz.storage.redis.retention`).

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

from datetime import datetime

from sagaz.clock import utcnow
from sagaz.records import (
    ClaimOutcome,
    InboxClaim,
)
from sagaz.storage.redis.connection import RedisConnection
from sagaz.storage.redis_schema import micros

__all__ = ["RedisInbox"]


class RedisInbox(RedisConnection):
    """The inbox: claims of trigger keys and their leases."""

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        outcome, row_saga, row_owner = await self._script(
            "CLAIM_INBOX",
            [self._inbox_key(trigger_id, key)],
            [self.prefix, saga_id, owner, micros(lease_until), micros(utcnow())],
        )
        return InboxClaim(ClaimOutcome(outcome), row_saga, row_owner or None)

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        await self._script(
            "COMPLETE_INBOX",
            [self._inbox_key(trigger_id, key)],
            [self.prefix, micros(utcnow())],
        )

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        await self._script("RELEASE_INBOX", [self._inbox_key(trigger_id, key)], [self.prefix])

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        touched = await self._script("RENEW_LEASES", [], [self.prefix, owner, micros(lease_until)])
        return int(touched)
