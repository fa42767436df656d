"""Saga control: its history and the open requests of operators.

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sagaz.clock import utcnow
from sagaz.records import (
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
)
from sagaz.storage.codec import dumps, from_micros, loads
from sagaz.storage.redis.connection import RedisConnection
from sagaz.storage.redis_schema import micros

__all__ = ["RedisControl"]

#: delete a saga's request (a field of the requests hash) if it is for the given action
_FINISH_REQUEST = (
    "local doc = redis.call('HGET', KEYS[1], ARGV[1]) "
    "if doc and cjson.decode(doc)['action'] == ARGV[2] then "
    "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)


class RedisControl(RedisConnection):
    """Saga control: its history and the open requests of operators."""

    # -- saga control ----------------------------------------------------------------------
    # p:history:<saga_id> a list of JSON entries (ids from p:history-id); p:saga-requests a
    # hash of the open requests by saga id (HSETNX: at most one per saga)
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        if names:
            await self._db().hdel(self._key("steps", saga_id), *names)

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        db = self._db()
        entry_id = int(await db.incr(self._key("history-id")))
        document = dumps(
            {
                "id": entry_id,
                "action": entry.action,
                "actor": entry.actor,
                "detail": entry.detail,
                "at": micros(entry.at or utcnow()),
            }
        )
        await db.rpush(self._key("history", entry.saga_id), document)
        return entry_id

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        documents = await self._db().lrange(self._key("history", saga_id), 0, limit - 1)
        entries = []
        for document in documents:
            data = loads(document)
            entries.append(
                SagaHistoryRecord(
                    saga_id,
                    data["action"],
                    data["actor"],
                    data["detail"],
                    data["id"],
                    from_micros(data["at"]),
                )
            )
        return sorted(entries, key=lambda e: e.id or 0)

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        document = dumps(
            {
                "action": SagaAction(request.action).value,
                "step": request.step,
                "actor": request.actor,
                "reason": request.reason,
                "attempt": request.attempt,
                "requested_at": micros(request.requested_at or utcnow()),
            }
        )
        added = await self._db().hsetnx(self._key("saga-requests"), request.saga_id, document)
        return bool(added)

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        key = self._key("saga-requests")
        if saga_id is not None:
            document = await self._db().hget(key, saga_id)
            documents = {saga_id: document} if document is not None else {}
        else:
            documents = await self._db().hgetall(key)
        requests = []
        for request_saga_id, document in documents.items():
            data = loads(document)
            requests.append(
                SagaControlRequest(
                    request_saga_id,
                    SagaAction(data["action"]),
                    data["step"],
                    data["actor"],
                    data["reason"],
                    data["attempt"],
                    from_micros(data["requested_at"]),
                )
            )
        requests.sort(key=lambda r: (r.requested_at or utcnow(), r.saga_id))
        return requests[:limit]

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        deleted = await self._db().eval(
            _FINISH_REQUEST, 1, self._key("saga-requests"), saga_id, SagaAction(action).value
        )
        return bool(deleted)
