"""What the store forgets with age: expired rows (``purge_expired``), finished sagas
(``purge_sagas``) and old dead letters (``purge_dead_letters``), see
:class:`~sagaz.abc.SagaStore`. Named leases and token buckets expire by themselves (their
keys' own ``PX``): nothing to purge for them.

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

import re
from datetime import datetime

from sagaz.clock import utcnow
from sagaz.storage.redis.connection import RedisConnection
from sagaz.storage.redis_schema import micros

__all__ = ["RedisRetention"]

_PURGE_BATCH = 500
#: index entries one purge_sagas script looks at, per saga it may delete: the kept ones
#: (a retry due, a request open, an outbox message unsent) are passed over
_SCAN_FACTOR = 4


class RedisRetention(RedisConnection):
    """Expired rows, finished sagas and old dead letters, deleted one bounded script at a time."""

    async def purge_expired(self, before: datetime) -> int:
        total = 0
        while True:
            affected, seen = await self._script(
                "PURGE_EXPIRED", [], [self.prefix, micros(before), _PURGE_BATCH]
            )
            total += int(affected)
            if not seen:
                return total + await self._purge_abandoned_inbox(before)

    async def _purge_abandoned_inbox(self, before: datetime) -> int:
        """Delete the pending inbox rows whose lease expired before ``before``: their worker
        died and their event never came back. Pending rows are only found through the set of
        rows each worker holds, so this walks those sets (``SCAN``: no index of workers)."""
        db, cutoff, total = self._db(), micros(before), 0
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", f"{self.prefix}:owner-inbox:") + "*"
        async for key in db.scan_iter(match=pattern, count=_PURGE_BATCH):
            total += int(await self._script("PURGE_ABANDONED_INBOX", [key], [cutoff]))
        return total

    async def purge_sagas(self, before: datetime, *, limit: int = 500) -> int:
        # one bounded script after another: a script moves the sagas it keeps behind the
        # others, so kept sagas never hide the deletable ones; it stops when a script found
        # nothing more to look at, or only sagas it had moved already
        scan, total = max(limit, 1) * _SCAN_FACTOR, 0
        while total < limit:
            deleted, seen, moved = await self._script(
                "PURGE_SAGAS",
                [],
                [self.prefix, micros(before), limit - total, scan, micros(utcnow())],
            )
            total += int(deleted)
            if int(seen) < scan or not (int(deleted) or int(moved)):
                break
        return total

    async def purge_dead_letters(self, before: datetime, *, limit: int = 500) -> int:
        if limit <= 0:
            return 0
        deleted = await self._script("PURGE_DEAD_LETTERS", [], [self.prefix, micros(before), limit])
        return int(deleted)
