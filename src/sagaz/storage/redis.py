"""A shared store in Redis, through ``redis.asyncio``.

>>> store = RedisSagaStore("redis://localhost:6379/0", prefix="myapp")  # doctest: +SKIP
>>> async with store: ...  # doctest: +SKIP

Each claim, and each write that must keep an index in step with its row, is one Lua script
(:mod:`sagaz.storage.redis_schema`), which Redis runs atomically. Every key starts with
``prefix:``, so several apps (or tests) can share a database. Written for a single Redis
primary (standalone or Sentinel); the scripts build some key names themselves, which Redis
Cluster does not allow. redis-py is imported when the store starts
(``pip install "sagaz[redis]"``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from sagaz._imports import require_extra
from sagaz._redis_pool import DEFAULT_POOL_TIMEOUT, blocking_pool
from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    InboxClaim,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    SchemaVersions,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage import redis_schema as tables
from sagaz.storage.codec import dumps, from_micros, loads
from sagaz.storage.rate_limits import MIN_RATE_WAIT, rate_interval
from sagaz.storage.redis_pipeline import grouped_client
from sagaz.storage.redis_schema import micros
from sagaz.storage.unavailable import raises_unavailable, unavailable_error
from sagaz.storage.url import redact_url
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

__all__ = ["RedisSagaStore"]

T = TypeVar("T")

_CHUNK = 200  # ids read per round trip when scanning an index
_PURGE_BATCH = 500
_MAX_CONNECTIONS = 8  # group commit keeps at most two pipelines out (redis_pipeline)


def _outbox_documents(outbox: Sequence[OutboxMessage]) -> list[str]:
    """What the store's scripts write as outbox rows: each message's saga id (the index it
    joins) and its JSON document."""
    return [
        item
        for m in outbox
        for item in (
            m.saga_id,
            dumps(
                {"saga_id": m.saga_id, "topic": m.topic, "payload": m.payload, "headers": m.headers}
            ),
        )
    ]


def _outbox_message(outbox_id: str, fields: dict[str, str]) -> OutboxMessage:
    """A ``p:outbox:<id>`` hash as a message."""
    return OutboxMessage(
        **loads(fields["doc"]),
        id=int(outbox_id),
        created_at=from_micros(fields["created_at"]),
        sent_at=tables.optional_moment(fields.get("sent_at")),
    )


def _schedule(trigger_name: str, fields: dict[str, str]) -> TriggerScheduleRecord:
    return TriggerScheduleRecord(
        trigger_name=trigger_name,
        saga_name=fields["saga_name"],
        poll_interval_ms=int(fields["poll_interval_ms"]),
        allow_concurrent=fields["allow_concurrent"] == "1",
        enabled=fields.get("enabled", "1") == "1",
        last_poll_at=tables.optional_moment(fields.get("last_poll_at")),
    )


@raises_unavailable
class RedisSagaStore(SagaStore):
    """A :class:`~sagaz.abc.SagaStore` in Redis, shared by every instance of an app.

    ``prefix`` starts every key (default ``sagaz``). Every command goes through group commit
    (:mod:`sagaz.storage.redis_pipeline`): the commands concurrent sagas issue at the same
    time share one round trip, each caller getting its own reply or error. Connections come
    from a blocking pool of at most ``max_connections`` (default 8: group commit needs
    few); a command waits up to ``pool_timeout`` seconds (default 20) for one. Extra keyword
    arguments go to each connection (``socket_timeout``, ``client_name``...). A lost
    server (restarted, unreachable, still loading its data) makes operations raise
    :class:`~sagaz.exceptions.StoreUnavailableError`; redis-py reconnects on the next call, so
    the store works again once the server is back. What a restart keeps is the server's
    business: run Redis with ``appendonly yes`` (``appendfsync always`` to lose no write).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sagaz",
        max_connections: int = _MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._client_options = client_options
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._noscript: type[Exception] = Exception
        self._lifecycle_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"RedisSagaStore({redact_url(self.url)!r}, prefix={self.prefix!r})"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, check the server answers, and record the key layout's version under a
        new prefix. Idempotent.

        An older layout raises :class:`~sagaz.exceptions.SchemaOutdatedError`: migrate it
        with ``sagaz db upgrade`` (:meth:`upgrade_schema`)."""
        async with self._lifecycle_lock:
            if self._client is not None:
                return
            redis = require_extra("redis", "redis.asyncio")
            client = grouped_client(self._pool(), translate=self._lost)
            try:
                await client.ping()
                await tables.migrate(client, self.prefix, url=self._store_url())
            except BaseException as exc:
                await client.aclose()
                if isinstance(exc, OSError | redis.RedisError):
                    raise self._unreachable(exc) from exc
                raise
            self._scripts = {
                name: client.register_script(source) for name, source in tables.SCRIPTS.items()
            }
            self._noscript = require_extra("redis", "redis.exceptions").NoScriptError
            self._client = client
            self._started = True

    async def stop(self) -> None:
        """Send the queued commands, then close the connection pool. Idempotent."""
        async with self._lifecycle_lock:
            if self._client is not None:
                await self._client.groups.drain()
            client, self._client = self._client, None
            self._started = False
            if client is not None:
                await client.aclose()

    async def schema_version(self) -> int:
        """The key-layout version recorded in Redis."""
        return int(await self._db().get(self._key("schema_version")) or 0)

    def _store_url(self) -> str:
        """The store's URL with the password redacted, ``?prefix=`` included (messages)."""
        if self.prefix == "sagaz":
            return redact_url(self.url)
        parts = urlsplit(redact_url(self.url))
        query = "&".join(q for q in (parts.query, urlencode({"prefix": self.prefix})) if q)
        return urlunsplit(parts._replace(query=query))

    def _unreachable(self, exc: BaseException) -> StoreError:
        """The error for ``exc``: :class:`StoreUnavailableError` when the server cannot be
        reached (an outage the engine waits out), else :class:`StoreError`."""
        error = StoreUnavailableError if self._unavailable(exc) else StoreError
        return error(
            f"cannot use Redis at {redact_url(self.url)}: {exc}; check the URL "
            "(redis://host:6379/0) and that the server is up"
        )

    def _pool(self) -> Any:
        return blocking_pool(
            self.url,
            user=repr(self),
            max_connections=self.max_connections,
            timeout=self.pool_timeout,
            decode_responses=True,
            **{**self._client_options, "protocol": 2},  # group commit reads RESP2 itself
        )

    async def _one_client(self, use: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``use`` on a client of its own (the store need not be started)."""
        redis = require_extra("redis", "redis.asyncio")
        client = grouped_client(self._pool())
        try:
            return await use(client)
        except (OSError, redis.RedisError) as exc:
            raise self._unreachable(exc) from exc
        finally:
            await client.aclose()

    async def schema_versions(self) -> SchemaVersions:
        return await self._one_client(lambda client: tables.read_versions(client, self.prefix))

    async def upgrade_schema(self) -> SchemaVersions:
        return await self._one_client(
            lambda client: tables.migrate(client, self.prefix, url=self._store_url(), upgrade=True)
        )

    def _lost(self, exc: Exception) -> Exception:
        """What a caller of a group that ``exc`` failed gets: :class:`StoreUnavailableError`
        for an outage, whichever operation it was in, else ``exc`` itself."""
        return unavailable_error(self, exc) if self._unavailable(exc) else exc

    def _unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the server cannot be reached (see :mod:`sagaz.storage.unavailable`):
        refused, reset or timed-out connections, a server still loading its data."""
        if isinstance(exc, OSError):
            return True
        redis = sys.modules.get("redis.exceptions")
        # ConnectionError covers BusyLoadingError (a restarted server loading its data)
        return redis is not None and isinstance(exc, redis.ConnectionError | redis.TimeoutError)

    def _db(self) -> Any:
        if self._client is None:
            raise StoreError(
                f"{self!r} is not started: call await store.start() or use async with store"
            )
        return self._client

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of the store's Lua scripts (``EVALSHA``, loading it again should the
        server have lost it), in the next group of commands like any other."""
        db, script = self._db(), self._scripts[name]
        try:
            return await db.groups.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except self._noscript:  # the server lost it (restarted, SCRIPT FLUSH): load it again
            script.sha = await db.script_load(script.script)
            return await db.evalsha(script.sha, len(keys), *keys, *args)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _inbox_key(self, trigger_id: str, key: str) -> str:
        # two free-form parts: quote them so ("a:b", "c") and ("a", "b:c") stay apart
        return self._key("inbox", quote(trigger_id, safe=""), quote(key, safe=""))

    def _open_executions_key(self, trigger_name: str, saga_id: str) -> str:
        return self._key("texec-open-saga", quote(trigger_name, safe=""), quote(saga_id, safe=""))

    # -- sagas -----------------------------------------------------------------------------
    def _saga_args(
        self,
        mode: str,
        record: SagaRecord,
        now: datetime,
        outbox: Sequence[OutboxMessage] = (),
    ) -> tuple[list[str], dict[str, str]]:
        """The ``SAVE_SAGA`` arguments, and the fields it writes to a new saga's hash."""
        status = SagaStatus(record.status)
        values: dict[str, str | None] = {
            "saga_id": record.saga_id,
            "saga_name": record.saga_name,
            "status": status.value,
            "context": dumps(record.context),
            "attempt": str(record.attempt),
            "error": record.error,
            "trigger_id": record.trigger_id,
            "event": None if record.event is None else dumps(record.event),
            "owner": record.owner,
            "lease": None if record.lease_expires_at is None else micros(record.lease_expires_at),
        }
        created, updated = micros(record.created_at or now), micros(now)
        present = [(k, v) for k, v in values.items() if v is not None]
        absent = [k for k, v in values.items() if v is None]
        args = [
            self.prefix,
            mode,
            record.saga_id,
            record.saga_name,
            status.value,
            "1" if status in TERMINAL_SAGA_STATUSES else "0",
            created,
            updated,
            record.owner or "",
            "0" if record.event is None else "1",
            str(len(present)),
            *(item for pair in present for item in pair),
            str(len(absent)),
            *absent,
            *_outbox_documents(outbox),
        ]
        return args, {**dict(present), "created_at": created, "updated_at": updated}

    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now = utcnow()
        key = self._key("saga", record.saga_id)
        args, written = self._saga_args("create", record, now)
        for _ in range(5):
            if await self._script("SAVE_SAGA", [key], args):
                # the script wrote exactly these fields (atomically): no need to read them back
                return tables.saga_from_hash(written), True
            stored = await self.get_saga(record.saga_id)
            if stored is not None:
                return stored, False
        raise StoreError(f"saga {record.saga_id!r} kept appearing and disappearing; retry")

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        await self._script(
            "SAVE_SAGA",
            [self._key("saga", record.saga_id)],
            self._saga_args("save", record, utcnow(), outbox)[0],
        )

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        fields = await self._db().hgetall(self._key("saga", saga_id))
        return tables.saga_from_hash(fields) if fields else None

    async def _scan(
        self, index: str, keep: Callable[[SagaRecord], bool], limit: int
    ) -> list[SagaRecord]:
        """Sagas listed in the sorted set ``index``, in its order, that pass ``keep``."""
        db, start = self._db(), 0
        found: list[SagaRecord] = []
        while len(found) < limit:
            ids = await db.zrange(index, start, start + _CHUNK - 1)
            if not ids:
                break
            start += len(ids)
            async with db.pipeline(transaction=False) as pipe:
                for saga_id in ids:
                    pipe.hgetall(self._key("saga", saga_id))
                rows = await pipe.execute()
            for fields in rows:
                if fields and keep(record := tables.saga_from_hash(fields)):
                    found.append(record)
        return found[:limit]

    async def _scan_newest(
        self, index: str, keep: Callable[[SagaRecord], bool], limit: int, below: str
    ) -> list[SagaRecord]:
        """Sagas listed in the sorted set ``index`` with a score under ``below``, highest
        score (newest) first, that pass ``keep``."""
        db = self._db()
        found: list[SagaRecord] = []
        while len(found) < limit:
            pairs = await db.zrevrangebyscore(
                index, below, "-inf", start=0, num=_CHUNK, withscores=True
            )
            if not pairs:
                break
            below = f"({int(pairs[-1][1])}"
            async with db.pipeline(transaction=False) as pipe:
                for saga_id, _ in pairs:
                    pipe.hgetall(self._key("saga", saga_id))
                rows = await pipe.execute()
            for fields in rows:
                if fields and keep(record := tables.saga_from_hash(fields)):
                    found.append(record)
        return found[:limit]

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        trigger_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        # newest first is descending ``seq``: the status and name filters walk their sorted
        # sets backwards; the others filter that walk
        below = "+inf"
        if after is not None:
            seq = await self._db().hget(self._key("saga", after), "seq")
            if seq is None:
                return []
            below = f"({seq}"
        if status is not None:
            index = self._key("sagas-status", SagaStatus(status).value)
        elif saga_name is not None:
            index = self._key("sagas-name", saga_name)
        else:
            index = self._key("sagas")

        def keep(r: SagaRecord) -> bool:
            created = r.created_at
            assert created is not None  # every stored saga has one
            return (
                (status is None or r.status == status)
                and (saga_name is None or r.saga_name == saga_name)
                and (trigger_id is None or r.trigger_id == trigger_id)
                and (created_after is None or created >= created_after)
                and (created_before is None or created < created_before)
            )

        return await self._scan_newest(index, keep, limit, below)

    async def delete_saga(self, saga_id: str) -> None:
        await self._script(
            "DELETE_SAGA",
            [self._key("saga", saga_id), self._key("steps", saga_id)],
            [self.prefix, saga_id],
        )

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        return await self._scan(
            self._key("sagas-active"),
            lambda r: (
                r.status not in TERMINAL_SAGA_STATUSES
                and (r.lease_expires_at is None or r.lease_expires_at < now)
            ),
            limit,
        )

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        claimed = await self._script(
            "CLAIM_SAGA",
            [self._key("saga", saga_id)],
            [self.prefix, saga_id, owner, micros(lease_until), micros(utcnow())],
        )
        return bool(claimed)

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = micros(utcnow())
        await self._script(
            "SAVE_STEP",
            [self._key("steps", step.saga_id)],
            [
                self.prefix,
                step.name,
                self._step_document(step, now),
                now,
                *_outbox_documents(outbox),
            ],
        )

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One Lua script (``SAVE_CHECKPOINT``): the writes of ``save_step``, ``save_saga``
        and ``complete_inbox`` in turn, atomically (see the contract)."""
        saga_ids = {step.saga_id for step in steps} | ({saga.saga_id} if saga else set())
        if len(saga_ids) != 1:  # nothing, or several sagas: the calls one by one
            await super().save_checkpoint(saga, steps, outbox, complete_inbox=complete_inbox)
            return
        [saga_id] = saga_ids
        moment = utcnow()
        now = micros(moment)
        args: list[Any] = [len(steps)]
        for index, step in enumerate(steps):
            messages = outbox if saga is None and index == len(steps) - 1 else ()
            step_args = [self.prefix, step.name, self._step_document(step, now), now]
            step_args += _outbox_documents(messages)
            args += [len(step_args), *step_args]
        saga_args = [] if saga is None else self._saga_args("save", saga, moment, outbox)[0]
        args += [len(saga_args), *saga_args]
        inbox_args = [] if complete_inbox is None else [self.prefix, now]
        args += [len(inbox_args), *inbox_args]
        steps_key = self._key("steps", saga_id)
        inbox_key = steps_key if complete_inbox is None else self._inbox_key(*complete_inbox)
        await self._script(
            "SAVE_CHECKPOINT", [steps_key, self._key("saga", saga_id), inbox_key], args
        )

    @staticmethod
    def _step_document(step: StepRecord, now: str) -> str:
        """A step checkpoint as the JSON document of the steps hash."""
        return dumps(
            {
                "saga_id": step.saga_id,
                "name": step.name,
                "status": StepStatus(step.status).value,
                "result": step.result,
                "error": step.error,
                "attempts": step.attempts,
                "completed_seq": step.completed_seq,
                "compensation_error": step.compensation_error,
                "updated_at": now,
            }
        )

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        steps = []
        for document in await self._db().hvals(self._key("steps", saga_id)):
            data = loads(document)
            data["status"] = StepStatus(data["status"])
            data["updated_at"] = from_micros(data["updated_at"])
            steps.append(StepRecord(**data))
        return steps

    async def reset_steps(self, saga_id: str) -> None:
        await self._db().delete(self._key("steps", saga_id))

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

    async def purge_expired(self, before: datetime) -> int:
        total = 0
        while True:
            affected, seen = await self._script(
                "PURGE_EXPIRED", [], [self.prefix, micros(before), _PURGE_BATCH]
            )
            total += int(affected)
            if not seen:
                return total

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        db = self._db()
        ids = await db.zrange(self._key("outbox-unsent"), 0, limit - 1) if limit > 0 else []
        async with db.pipeline(transaction=False) as pipe:
            for outbox_id in ids:
                pipe.hgetall(self._key("outbox", outbox_id))
            rows = await pipe.execute()
        return [
            _outbox_message(outbox_id, fields)
            for outbox_id, fields in zip(ids, rows, strict=True)
            if fields and "sent_at" not in fields  # else sent or gone between the two reads
        ]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        db = self._db()
        index = self._key("outbox-saga", saga_id)
        ids = await db.zrange(index, 0, limit - 1) if limit > 0 else []
        async with db.pipeline(transaction=False) as pipe:
            for outbox_id in ids:
                pipe.hgetall(self._key("outbox", outbox_id))
            rows = await pipe.execute()
        return [
            _outbox_message(outbox_id, fields)
            for outbox_id, fields in zip(ids, rows, strict=True)
            if fields
        ]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if ids:
            await self._script(
                "MARK_OUTBOX_SENT",
                [],
                [self.prefix, micros(utcnow()), *(int(i) for i in ids)],
            )

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        document = dumps(
            {
                "trigger_id": record.trigger_id,
                "saga_name": record.saga_name,
                "payload": record.payload,
                "error": record.error,
                "reason": record.reason,
                "traceback": record.traceback,
                "attempts": record.attempts,
                "saga_id": record.saga_id,
                "source": record.source,
                "meta": record.meta,
            }
        )
        dead_id = await self._script(
            "ADD_DEAD_LETTER",
            [],
            [self.prefix, record.trigger_id, document, micros(utcnow())],
        )
        return int(dead_id)

    async def _dead_letters(self, ids: Sequence[str]) -> list[DeadLetterRecord]:
        async with self._db().pipeline(transaction=False) as pipe:
            for dead_id in ids:
                pipe.hgetall(self._key("dead", str(dead_id)))
            rows = await pipe.execute()
        return [
            DeadLetterRecord(
                **loads(fields["doc"]),
                id=int(dead_id),
                created_at=from_micros(fields["created_at"]),
            )
            for dead_id, fields in zip(ids, rows, strict=True)
            if fields
        ]

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        if limit <= 0:
            return []
        index = self._key("dead-all" if trigger_id is None else f"dead-by-trigger:{trigger_id}")
        return await self._dead_letters(await self._db().zrange(index, 0, limit - 1))

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        found = await self._dead_letters([str(int(dead_letter_id))])
        return found[0] if found else None

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        deleted = await self._script(
            "DELETE_DEAD_LETTER", [], [self.prefix, str(int(dead_letter_id))]
        )
        return bool(deleted)

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        last = record.last_poll_at
        await self._script(
            "SAVE_TRIGGER_SCHEDULE",
            [self._key("schedule", record.trigger_name)],
            [
                self.prefix,
                record.trigger_name,
                record.saga_name,
                str(record.poll_interval_ms),
                "1" if record.allow_concurrent else "0",
                "1" if record.enabled else "0",
                "" if last is None else micros(last),  # "" keeps the stored time
            ],
        )

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        fields = await self._db().hgetall(self._key("schedule", trigger_name))
        return _schedule(trigger_name, fields) if fields else None

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        names = sorted(await self._db().smembers(self._key("schedules")))
        pipe = self._db().pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._key("schedule", name))
        rows = await pipe.execute() if names else []
        return [_schedule(name, fields) for name, fields in zip(names, rows, strict=True) if fields]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        found = await self._script(
            "SET_TRIGGER_ENABLED",
            [self._key("schedule", trigger_name)],
            [self.prefix, trigger_name, "1" if enabled else "0"],
        )
        return bool(found)

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        await self._script(
            "TOUCH_TRIGGER_SCHEDULE",
            [self._key("schedule", trigger_name)],
            [micros(last_poll_at)],
        )

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        started = await self._script(
            "START_TRIGGER_EXECUTION",
            [self._open_executions_key(record.trigger_name, record.saga_id)],
            [
                self.prefix,
                record.trigger_name,
                record.context_hash,
                record.saga_id,
                "1" if exclusive else "0",
                micros(record.started_at or utcnow()),
            ],
        )
        return bool(started)

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        await self._script(
            "COMPLETE_TRIGGER_EXECUTION",
            [self._open_executions_key(trigger_name, saga_id)],
            [self.prefix, trigger_name, micros(utcnow())],
        )

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        db = self._db()
        ids = await db.zrange(self._key("texecs", trigger_name), 0, -1)
        async with db.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hgetall(self._key("texec", execution_id))
            rows = await pipe.execute()
        return [
            TriggerExecutionRecord(
                trigger_name=fields["trigger_name"],
                context_hash=fields["context_hash"],
                saga_id=fields["saga_id"],
                started_at=from_micros(fields["started_at"]),
                completed_at=tables.optional_moment(fields.get("completed_at")),
            )
            for fields in rows
            if fields
        ]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        claimed = await self._script(
            "CLAIM_CRON_TICK",
            [
                self._key("cron", trigger_id),
                self._key("cron-owners", trigger_id),
                self._key("cron-triggers"),
            ],
            [micros(tick), owner, trigger_id],
        )
        return bool(claimed)

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        latest = await self._db().zrange(self._key("cron", trigger_id), -1, -1)
        return from_micros(latest[0]) if latest else None

    # -- leases ----------------------------------------------------------------------------
    # The key expires with the lease, on the server's clock.
    def _lease_key(self, name: str) -> str:
        return self._key("lease", quote(name, safe=""))

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        taken = await self._script("ACQUIRE_LEASE", [self._lease_key(name)], [holder, _ms(ttl)])
        return bool(taken)

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        renewed = await self._script("RENEW_LEASE", [self._lease_key(name)], [holder, _ms(ttl)])
        return bool(renewed)

    async def release_lease(self, name: str, holder: str) -> bool:
        released = await self._script("RELEASE_LEASE", [self._lease_key(name)], [holder])
        return bool(released)

    # -- shared rate limits ----------------------------------------------------------------
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        interval, tolerance = rate_interval(rate, burst)
        wait = await self._script(
            "TAKE_RATE_TOKEN",
            [self._key("rate", quote(name, safe=""))],
            [max(1, round(interval * 1e6)), round(tolerance * 1e6)],
        )
        return 0.0 if int(wait) == 0 else max(int(wait) / 1e6, MIN_RATE_WAIT)

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


#: delete a saga's request (a field of the requests hash) if it is for the given action
_FINISH_REQUEST = (
    "local doc = redis.call('HGET', KEYS[1], ARGV[1]) "
    "if doc and cjson.decode(doc)['action'] == ARGV[2] then "
    "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)


def _ms(seconds: float) -> int:
    """A lease's ``ttl`` as the whole milliseconds ``PX`` takes (at least 1)."""
    return max(1, round(seconds * 1000))
