"""``source="redis"``: consume a Redis Stream through a consumer group (redis-py asyncio).

At-least-once: an entry read with ``XREADGROUP`` stays in the group's pending list until the
engine calls ``delivery.ack()`` (``XACK``), after its saga reached a terminal state in the
store. ``nack(requeue=True)`` leaves it pending: it comes back through ``XAUTOCLAIM`` once it
has been idle for ``claim_idle_ms`` (here or in another process), or at once when a consumer
of the same name restarts (it first re-reads its own pending entries).

Entries of a consumer that died are taken over with ``XAUTOCLAIM`` after ``claim_idle_ms``.
While a saga runs, this source keeps its own entries fresh (``XCLAIM ... JUSTID`` to itself),
so a saga that runs longer than ``claim_idle_ms`` is not stolen by another live consumer.

``pause()`` (a paused trigger) stops reading (``XREADGROUP``, ``XAUTOCLAIM``): new entries wait
in the stream; entries in flight stay fresh and are acked as usual; an entry read but not yet
emitted when the pause came stays pending and is read again after ``resume()``.

Payload rule: an entry with a single field named ``data``, ``payload`` or ``body`` hands over
that field's raw bytes (decoded as JSON by the pipeline when possible); any other entry hands
over its fields as a ``dict[str, str]`` (UTF-8, undecodable bytes replaced).

>>> @trigger(source="redis", stream="model:events",
...          consumer_group="retraining-workers")  # doctest: +SKIP
... def on_drift(self, event: dict) -> dict: ...
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext
from sagaz.backoff import Backoff
from sagaz.clock import Clock
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import ConfigurationError, SagazError
from sagaz.triggers.options.redis import RedisOptions

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from sagaz.records import DeadLetterRecord

__all__ = ["PAYLOAD_FIELDS", "RedisStreamSource", "create"]

logger = logging.getLogger(__name__)

#: an entry whose only field has one of these names is that field's bytes
PAYLOAD_FIELDS = frozenset({b"data", b"payload", b"body"})
#: the longest pause between reconnection attempts
MAX_BACKOFF = 5.0
#: connections of one source's client; more concurrent commands wait for a free one
MAX_CONNECTIONS = 20
#: XACK retries after a connection error (XACK is idempotent), pausing about 0.05, 0.25, 1 s
ACK_RETRIES = 3


def default_consumer_name() -> str:
    """A consumer name unique to this process: ``{hostname}-{pid}-{8 hex}``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _entries(response: Any) -> list[tuple[str, dict[bytes, bytes] | None]]:
    """``[(entry_id, fields)]`` from an ``XREADGROUP`` reply (RESP2 list or RESP3 map)."""
    if not response:
        return []
    streams = response.values() if isinstance(response, dict) else (s[1] for s in response)
    return [(_text(entry_id), fields) for entries in streams for entry_id, fields in entries]


def _raise_if_cancelled() -> None:
    """Honour a cancellation that redis-py swallowed: a cancel landing in a blocking
    ``XREADGROUP`` can come back as an ordinary reply (seen with redis-py 8.1), which would
    leave ``run()`` emitting and looping in a task that was asked to stop. Checked before
    anything is emitted and at every turn of the source's loops (a swallowed cancel of an
    ``XAUTOCLAIM`` that found nothing, or of the heartbeat's ``XCLAIM``, emits nothing)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisStreamSource(Source):
    """Reads one stream as one consumer of a consumer group; ``XACK`` after the saga is done.

    Identity: ``"{stream}/{entry_id}"``. ``EventMeta.attempt`` is the entry's delivery count
    for recovered and claimed entries, 1 for a first read. ``nack(requeue=True)`` leaves the
    entry pending (redelivered after ``claim_idle_ms``); ``nack(requeue=False)`` acks it.
    """

    kind: ClassVar[str] = "redis"
    redeliverable: ClassVar[bool] = True

    def __init__(self, options: RedisOptions, ctx: SourceContext) -> None:
        config, trigger_id = ctx.config, ctx.trigger_id
        self.options = options
        self.stream = options.stream
        self.consumer_group = options.consumer_group or trigger_id
        self.consumer = options.consumer or default_consumer_name()
        self.url = options.url or config.redis_url
        self.batch_size = options.batch_size or min(config.queue_size, 100)
        self.block_ms = options.block_ms
        self.claim_idle_ms = options.claim_idle_ms
        self.start_id = options.start_id
        self.dead_letter_topic = ctx.dead_letter_topic
        self.trigger_id = trigger_id
        self._ctx = ctx
        self._clock: Clock = ctx.clock
        self._log = {"source": self.kind, "trigger": trigger_id, "stream": self.stream}
        self._errors: Any = require_extra("redis").exceptions
        #: errors after which the connection is re-established and the call retried
        self._transient: tuple[type[BaseException], ...] = (
            self._errors.ConnectionError,
            self._errors.TimeoutError,
            OSError,
        )
        self._client: Redis | None = None
        #: entries read and not yet acked/nacked: kept fresh, never re-emitted
        self._inflight: set[str] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self._intake = asyncio.Event()  # cleared while the trigger is paused
        self._intake.set()

    @property
    def _redis(self) -> Redis:
        if self._client is None:
            raise SagazError(
                f"redis source of trigger {self.trigger_id!r} is not started: "
                "call `await source.start()` first"
            )
        return self._client

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and create the consumer group (``MKSTREAM``) unless it exists."""
        if self._started:
            return
        redis_asyncio = require_extra("redis", "redis.asyncio")
        self._stopping = False
        # a blocking XREADGROUP must not trip the socket timeout
        socket_timeout = max(5.0, self.block_ms / 1000 + 5.0)
        # Acks come from every saga settling at once (up to max_concurrent_sagas), beside the
        # blocking read. A plain pool fails the commands beyond its cap (redis-py 8: 100) with
        # MaxConnectionsError, which looks like a lost link: XACKs gave up after their retries
        # and left finished entries pending. This pool makes a command wait for a connection.
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=socket_timeout,
            client_name=f"sagaz:{self.consumer}",
            socket_timeout=socket_timeout,
        )
        client: Redis = redis_asyncio.Redis.from_pool(pool)
        try:
            await self._ensure_group(client)
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._started = True
        self._heartbeat = asyncio.create_task(
            self._keep_fresh(), name=f"sagaz-redis-heartbeat-{self.stream}"
        )
        logger.info("redis source connected", extra={**self._log, "consumer": self.consumer})

    async def _ensure_group(self, client: Redis) -> None:
        try:
            await client.xgroup_create(
                self.stream, self.consumer_group, id=self.start_id, mkstream=True
            )
        except self._errors.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return
            raise ConfigurationError(
                f"trigger {self.trigger_id!r}: cannot create consumer group "
                f"{self.consumer_group!r} on {self.stream!r} ({exc}); the key must be a "
                "stream (or absent) and the Redis user needs the XGROUP/XREADGROUP commands"
            ) from exc

    async def stop(self) -> None:
        """Stop keeping entries fresh and close the client; un-acked entries stay pending
        for redelivery. The consumer is removed from the group when it owns nothing.
        Idempotent."""
        if not self._started:
            return
        self._stopping = True
        self._started = False
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.wait({heartbeat})  # (a cancel of stop()'s caller is not swallowed)
            if not heartbeat.cancelled() and (exc := heartbeat.exception()) is not None:
                logger.warning("heartbeat failed: %r", exc, extra=self._log)
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await self._forget_consumer(client)
        finally:
            await client.aclose()
        logger.info("redis source stopped", extra=self._log)

    async def _forget_consumer(self, client: Redis) -> None:
        # Deleting a consumer drops its pending entries, so only an empty one goes.
        try:
            pending = await client.xpending_range(
                self.stream, self.consumer_group, "-", "+", 1, consumername=self.consumer
            )
            if not pending:
                await client.xgroup_delconsumer(self.stream, self.consumer_group, self.consumer)
        except self._errors.RedisError as exc:
            logger.debug("consumer cleanup skipped: %r", exc, extra=self._log)

    # -- consuming -------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """Consume until cancelled: own pending entries first, then new ones, with a
        periodic ``XAUTOCLAIM`` sweep for entries idle longer than ``claim_idle_ms``."""
        errors = self._errors
        backoff = Backoff(self._clock, initial=0.1, maximum=MAX_BACKOFF)
        recovering = True  # our own pending entries (a restart under the same name)
        cursor = "0-0"  # of the recovery read and of the XAUTOCLAIM sweep
        loop = asyncio.get_running_loop()
        claim_every = self.claim_idle_ms / 2000
        next_claim = loop.time() + claim_every
        missing_group = False
        while not self._stopping:
            _raise_if_cancelled()
            try:
                if not self._started:
                    await self.start()
                elif missing_group:
                    await self._ensure_group(self._redis)
                    missing_group = False
                if not self._intake.is_set():
                    await self._intake.wait()
                    recovering, cursor = True, "0-0"  # what a pause left pending, first
                    continue
                if recovering:
                    cursor = await self._recover(emit, cursor)
                    recovering = cursor != "0-0"
                elif loop.time() >= next_claim:
                    cursor = await self._claim(emit, cursor)
                    if cursor == "0-0":
                        next_claim = loop.time() + claim_every
                else:
                    wait_ms = math.ceil((next_claim - loop.time()) * 1000)
                    await self._read_new(emit, max(1, min(self.block_ms, wait_ms)))
                backoff.reset()
            except self._transient as exc:
                if isinstance(exc, errors.AuthenticationError):
                    raise ConfigurationError(
                        f"trigger {self.trigger_id!r}: Redis refused the login ({exc}); fix "
                        "the url option or TriggerConfig.redis_url (SAGAZ_REDIS_URL)"
                    ) from exc
                if self._stopping:
                    return
                delay = backoff.next()
                await self._report(exc, f"redis unreachable; retrying in {delay:.1f}s")
                await backoff.sleep(delay)
                recovering, cursor = True, "0-0"  # a reply may have been lost with the link
            except errors.ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                # the stream or the group vanished (deleted, or Redis restarted empty)
                await self._report(exc, "consumer group missing; creating it again")
                missing_group = True

    async def pause(self) -> None:
        """Read nothing more until :meth:`resume`; entries in flight are left alone."""
        self._intake.clear()
        logger.info("redis intake paused", extra=self._log)

    async def resume(self) -> None:
        """Read again, first the entries a pause left pending here."""
        self._intake.set()
        logger.info("redis intake resumed", extra=self._log)

    async def _report(self, exc: BaseException, what: str) -> None:
        logger.warning(what, extra={**self._log, "error": repr(exc)})
        if self._ctx is not None:
            await self._ctx.report_error(exc)

    async def _read_new(self, emit: Emit, block_ms: int) -> None:
        response = await self._redis.xreadgroup(
            self.consumer_group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=block_ms,
        )
        await self._emit_all(emit, _entries(response), attempts=None)

    async def _recover(self, emit: Emit, cursor: str) -> str:
        """Re-read a page of our own pending entries after ``cursor``; "0-0" when done."""
        response = await self._redis.xreadgroup(
            self.consumer_group,
            self.consumer,
            {self.stream: cursor},
            count=self.batch_size,
        )
        entries = _entries(response)
        if not entries:
            return "0-0"
        await self._emit_all(emit, entries, attempts=await self._delivery_counts(entries))
        return entries[-1][0]

    async def _claim(self, emit: Emit, cursor: str) -> str:
        """One page of ``XAUTOCLAIM``; returns the next cursor ("0-0" once the sweep ends)."""
        reply = await self._redis.xautoclaim(
            self.stream,
            self.consumer_group,
            self.consumer,
            self.claim_idle_ms,
            start_id=cursor,
            count=self.batch_size,
        )
        next_cursor, claimed = _text(reply[0]), [(_text(i), f) for i, f in reply[1]]
        if claimed:
            logger.debug("claimed %d idle entries", len(claimed), extra=self._log)
            await self._emit_all(emit, claimed, attempts=await self._delivery_counts(claimed))
        return next_cursor

    async def _delivery_counts(
        self, entries: list[tuple[str, dict[bytes, bytes] | None]]
    ) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.stream, self.consumer_group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        # raise_on_error=False: the first error is raised as Redis sent it, so run() still
        # knows a NOGROUP (redis-py prefixes a pipeline's error with "Command # 1 (...)")
        for rows in await pipe.execute(raise_on_error=False):
            if isinstance(rows, Exception):
                raise rows
            for row in rows:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def _emit_all(
        self,
        emit: Emit,
        entries: list[tuple[str, dict[bytes, bytes] | None]],
        attempts: dict[str, int] | None,
    ) -> None:
        _raise_if_cancelled()
        fresh = [(i, f) for i, f in entries if i not in self._inflight]
        self._inflight.update(i for i, _ in fresh)
        for index, (entry_id, fields) in enumerate(fresh):
            if not self._intake.is_set():  # paused: the rest stay pending, read after resume
                self._inflight.difference_update(i for i, _ in fresh[index:])
                return
            if not fields:
                # deleted from the stream while pending: nothing left to process
                await self._settle(entry_id, ack=True)
                continue
            attempt = 1 if attempts is None else max(1, attempts.get(entry_id, 1))
            await emit(self._delivery(entry_id, fields, attempt))

    def _delivery(self, entry_id: str, fields: dict[bytes, bytes], attempt: int) -> Delivery:
        payload: Any
        if len(fields) == 1 and next(iter(fields)) in PAYLOAD_FIELDS:
            payload, decoded = next(iter(fields.values())), False
        else:
            payload, decoded = {_text(k): _text(v) for k, v in fields.items()}, True
        logger.debug(
            "redis entry received",
            extra={**self._log, "message_id": entry_id, "attempt": attempt},
        )
        return Delivery(
            payload=payload,
            meta=EventMeta(
                source=self.kind,
                trigger=self.trigger_id,
                message_id=entry_id,
                topic=self.stream,
                attempt=attempt,
            ),
            identity=f"{self.stream}/{entry_id}",
            ack=partial(self._settle, entry_id, ack=True),
            nack=lambda requeue: self._settle(entry_id, ack=not requeue),
            decoded=decoded,
        )

    async def _settle(self, entry_id: str, *, ack: bool) -> None:
        """``XACK`` (ack, or nack without requeue); otherwise leave the entry pending."""
        self._inflight.discard(entry_id)
        if not ack or self._client is None:
            return
        backoff = Backoff(self._clock, initial=0.05, maximum=1.0, factor=5.0)
        while True:
            try:
                await self._client.xack(self.stream, self.consumer_group, entry_id)
                return
            except self._transient as exc:
                if backoff.attempts == ACK_RETRIES:
                    # It stays pending: it is claimed again later and the inbox dedups it.
                    logger.debug("XACK lost: %r", exc, extra={**self._log, "message_id": entry_id})
                    return
            await backoff.sleep()

    async def _keep_fresh(self) -> None:
        """Reset the idle time of our in-flight entries so no live consumer claims them."""
        interval = self.claim_idle_ms / 3000
        # Only entries idle for a while: this rarely takes back one that another consumer
        # claimed after our heartbeats stalled past claim_idle_ms (the inbox lease decides).
        min_idle = max(1, self.claim_idle_ms // 6)
        while True:
            _raise_if_cancelled()
            await asyncio.sleep(interval)  # real time: Redis measures the idle time of entries
            ids: list[Any] = list(self._inflight)
            try:
                for start in range(0, len(ids), 1000):
                    await self._redis.xclaim(
                        self.stream,
                        self.consumer_group,
                        self.consumer,
                        min_idle,
                        ids[start : start + 1000],
                        justid=True,
                    )
            except self._errors.RedisError as exc:
                logger.debug("keeping entries fresh failed: %r", exc, extra=self._log)

    # -- dead letters ----------------------------------------------------------------------
    async def publish_dead_letter(self, delivery: Delivery, record: DeadLetterRecord) -> None:
        """``XADD`` the original payload to the ``dead_letter_topic`` stream with the fields
        ``payload``, ``error``, ``reason``, ``attempts``, ``trigger``, ``stream``, ``entry_id``."""
        if not self.dead_letter_topic:
            return
        payload = delivery.payload
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        elif not isinstance(payload, bytes | str):
            payload = json.dumps(record.payload, default=str)
        fields: dict[str, bytes | str | int] = {
            "payload": payload,
            "error": record.error,
            "reason": record.reason,
            "attempts": record.attempts,
            "trigger": record.trigger_id or self.trigger_id,
            "stream": self.stream,
            "entry_id": delivery.meta.message_id or "",
        }
        if record.saga_id:
            fields["saga_id"] = record.saga_id
        await self._redis.xadd(self.dead_letter_topic, fields)  # type: ignore[arg-type]
        logger.debug(
            "dead letter published",
            extra={**self._log, "dead_letter_topic": self.dead_letter_topic},
        )

    def describe(self) -> dict[str, Any]:
        """Kind, stream, group and consumer."""
        return {
            "kind": self.kind,
            "stream": self.stream,
            "consumer_group": self.consumer_group,
            "consumer": self.consumer,
        }


def create(options: RedisOptions, ctx: SourceContext) -> RedisStreamSource:
    """Build the source of one ``source="redis"`` trigger (checks that redis-py is installed).

    ``consumer_group`` defaults to the trigger id, ``consumer`` to a per-process unique name,
    ``url`` to ``TriggerConfig.redis_url``; the dead-letter stream is ``ctx.dead_letter_topic``.
    """
    return RedisStreamSource(options, ctx)
