"""``source="kafka"``: consume topics with aiokafka in a consumer group, at least once.

>>> @trigger(source="kafka", topic="orders", group_id="order-service")  # doctest: +SKIP
... def on_order(self, event: dict) -> dict: ...

Offsets are committed by hand, per partition, up to the highest **contiguous** settled offset,
so an acknowledgement that arrives out of order never commits past an event whose saga has not
finished. Emits run in one task per partition (per-partition order is kept), what is buffered
as one batch (admission claims a batch together), while the poll loop keeps polling; a
partition whose buffer fills up is held back, not the consumer, so a slow pipeline never gets
the member evicted for ``max_poll_interval_ms``. A held-back partition is left out of the
polls rather than paused in aiokafka, which would drop the records it has prefetched: they
stay in aiokafka, one fetch per partition, and are there at once when the partition drains.
Only while every partition has been held back for half of ``max_poll_interval_ms`` are they
paused in aiokafka, so that polling keeps the member in its group. On a rebalance, the revoked
partitions commit what is contiguous-done and their in-flight state is forgotten (a late ack is
ignored: the new owner redelivers the event and the inbox deduplicates it).

``nack(requeue=True)`` leaves the offset uncommitted: the event comes back after a restart or a
rebalance; until then that partition's commits stop short of it (nothing is re-sought
in-process). ``nack(requeue=False)`` commits past the event, as Kafka cannot drop one message.

``pause()`` (a paused trigger) pauses every assigned partition, and each one assigned later,
while the poll loop keeps polling (the member stays in its group); records already fetched stay
buffered, uncommitted, and are emitted after ``resume()``; events in flight finish and commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, ClassVar

from sagaz._aio import wait_event
from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext, emit_many
from sagaz.backoff import Backoff
from sagaz.events import Delivery
from sagaz.outbox.kafka import start_producer
from sagaz.records import DeadLetterRecord
from sagaz.sources.kafka.commits import OffsetCommits
from sagaz.sources.kafka.partitions import PartitionState, resumes_at
from sagaz.sources.kafka.records import take_deliveries
from sagaz.triggers.options.kafka import KafkaOptions

__all__ = ["KafkaSource", "create"]

logger = logging.getLogger(__name__)


def create(options: KafkaOptions, ctx: SourceContext) -> KafkaSource:
    """Build the source of one Kafka trigger; raises ``MissingExtraError`` without aiokafka."""
    require_extra("kafka")
    return KafkaSource(options, ctx)


class KafkaSource(OffsetCommits, Source):
    """A consumer-group member of one Kafka trigger (see the module docstring).

    >>> async with kafka.create(KafkaOptions(topic="orders"), ctx) as source:  # doctest: +SKIP
    ...     await source.run(emit)
    """

    kind: ClassVar[str] = "kafka"
    redeliverable: ClassVar[bool] = True
    settles_locally: ClassVar[bool] = True  # acks mark offsets; commits are batched

    def __init__(self, options: KafkaOptions, ctx: SourceContext) -> None:
        self._ctx = ctx
        self.options = options
        self.topics = options.topics
        self.group_id: str = options.group_id or f"sagaz-{ctx.trigger_id}"
        self.bootstrap_servers: str = (
            options.bootstrap_servers or ctx.config.kafka_bootstrap_servers
        )
        self.dead_letter_topic: str | None = ctx.dead_letter_topic
        #: how many times partitions were assigned to this member (1 while no rebalance)
        self.assignments = 0
        self._log = {"trigger": ctx.trigger_id, "source": self.kind, "group_id": self.group_id}
        self._partitions: dict[Any, PartitionState] = {}
        self._aiokafka: Any = None
        self._errors: Any = None
        self._consumer: Any = None
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._commit_wanted = asyncio.Event()
        self._settled_since_commit = 0
        self._emit: Emit | None = None
        self._closing = asyncio.Event()
        self._close_future: asyncio.Future[None] | None = None
        self._run_done = asyncio.Event()
        self._run_done.set()
        self._last_records_at = 0.0
        self._limits: tuple[int, int] = (
            options.max_buffered_per_partition,
            options.max_unsettled_per_partition,
        )
        self._half_buffered = resumes_at(options.max_buffered_per_partition)
        self._intake = asyncio.Event()  # cleared while the trigger is paused
        self._intake.set()
        #: set when a held-back partition drained (see ``_fetchable``)
        self._released = asyncio.Event()
        #: since when every partition is held back, and whether they are paused in aiokafka
        self._all_held_since: float | None = None
        self._held_in_client = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Check that aiokafka is installed; ``run`` connects (and reconnects) to the broker."""
        self._aiokafka = require_extra("kafka")
        self._errors = require_extra("kafka", "aiokafka.errors")
        self._closing.clear()
        self._close_future = None
        await super().start()

    async def stop(self) -> None:
        """Stop intake, commit what is settled (shielded from cancellation), close clients."""
        if not self._started:
            return
        if self._close_future is None:
            self._closing.set()
            self._close_future = asyncio.ensure_future(self._close())
        closing = self._close_future
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await asyncio.wait({closing})  # finish the final commit, then let the cancel through
            raise
        finally:
            await super().stop()

    async def _close(self) -> None:
        # run() notices _closing within one poll
        await wait_event(self._run_done, self.options.poll_timeout_ms / 500 + 1)
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        try:
            if consumer is not None:
                await self._commit(consumer)
                self._partitions.clear()
                await _stop_consumer(consumer)
        finally:
            if producer is not None:
                await producer.stop()

    def describe(self) -> dict[str, Any]:
        """Configuration and live state (for logs and ``sagaz triggers list``)."""
        states = self._partitions.values()
        return {
            "kind": self.kind,
            "topics": self.topics,
            "group_id": self.group_id,
            "bootstrap_servers": self.bootstrap_servers,
            "dead_letter_topic": self.dead_letter_topic,
            "assigned": sorted((p.tp.topic, p.tp.partition) for p in states),
            "paused": sorted((p.tp.topic, p.tp.partition) for p in states if p.paused),
            "assignments": self.assignments,
            "intake_paused": not self._intake.is_set(),
        }

    # -- pausing ---------------------------------------------------------------------------
    async def pause(self) -> None:
        """Fetch nothing more until :meth:`resume`: every partition is paused (the poll loop
        keeps polling, so the member stays in its group); nothing is committed past what
        was emitted, and events in flight finish."""
        self._intake.clear()
        if self._consumer is not None and self._partitions:
            with contextlib.suppress(self._errors.IllegalStateError):  # mid-rebalance
                self._consumer.pause(*self._partitions)
        logger.info("Kafka intake paused", extra=self._log)

    async def resume(self) -> None:
        """Fetch and emit again (a partition whose buffer is still full stays held back
        until it drains)."""
        self._intake.set()
        self._held_in_client = False
        if self._consumer is not None:
            for partition in self._partitions.values():
                with contextlib.suppress(self._errors.IllegalStateError):
                    self._consumer.resume(partition.tp)
        logger.info("Kafka intake resumed", extra=self._log)

    # -- consuming -------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """Poll until ``stop()`` or cancellation, emitting every message in partition order."""
        if not self._run_done.is_set():
            raise RuntimeError(f"the Kafka source of {self._ctx.trigger_id!r} already runs")
        if not self._started:
            await self.start()
        self._emit = emit
        self._run_done.clear()
        committer = asyncio.create_task(self._commit_loop(), name=f"kafka-commit-{self.group_id}")
        try:
            await self._poll_loop()
        finally:
            workers = [p.worker for p in self._partitions.values() if p.worker is not None]
            for task in (committer, *workers):
                task.cancel()
            await asyncio.gather(committer, *workers, return_exceptions=True)
            for partition in self._partitions.values():
                partition.worker = None
            self._run_done.set()

    async def _poll_loop(self) -> None:
        longest = self.options.reconnect_backoff_max_ms / 1000
        backoff = Backoff(self._ctx.clock, initial=min(0.2, longest), maximum=longest)
        while not self._closing.is_set():
            try:
                if self._consumer is None:
                    await self._until_closing(self._connect())
                    if self._consumer is None:
                        return
                partitions = self._fetchable()
                if partitions is None:  # every partition is held back
                    await self._wait_released()
                    continue
                batches = await self._consumer.getmany(
                    *partitions,
                    timeout_ms=self.options.poll_timeout_ms,
                    max_records=self.options.max_poll_records,
                )
            except self._errors.ConsumerStoppedError:
                return
            except (self._errors.KafkaError, OSError) as exc:
                await self._report(exc, "Kafka consumer failed; retrying")
                await backoff.sleep(until=self._closing)
                continue
            backoff.reset()
            if batches:
                self._last_records_at = asyncio.get_running_loop().time()
            for tp, records in batches.items():
                self._take(tp, records)

    def _fetchable(self) -> list[Any] | None:
        """The partitions to poll: ``[]`` for all of them (none is held back, the usual
        case), else those not held back; ``None`` while every one is held back (their
        prefetched records stay in aiokafka until they drain)."""
        partitions = self._partitions.values()
        if not any(p.paused for p in partitions):
            return []
        free = [p.tp for p in partitions if not p.paused]
        if free or self._held_in_client:
            return free  # [] when held in aiokafka: the poll keeps the member in its group
        return None

    async def _wait_released(self) -> None:
        """Wait up to one poll for a held-back partition to drain. After half of
        ``max_poll_interval_ms`` with every partition held back, pause them in aiokafka
        (their prefetch is dropped) so that the next polls keep the member in its group."""
        now = asyncio.get_running_loop().time()
        if self._all_held_since is None:
            self._all_held_since = now
        if now - self._all_held_since >= self.options.max_poll_interval_ms / 2000:
            if self._consumer is not None:
                with contextlib.suppress(self._errors.IllegalStateError):  # mid-rebalance
                    self._consumer.pause(*(p.tp for p in self._partitions.values()))
            self._held_in_client = True
            return
        self._released.clear()
        await wait_event(self._released, self.options.poll_timeout_ms / 1000)

    async def _until_closing(self, work: Awaitable[None]) -> None:
        """Await ``work`` unless ``stop()`` is called first (then cancel it)."""
        task = asyncio.ensure_future(work)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (closing, task):
                future.cancel()  # a no-op for the one that is done
            await asyncio.wait({closing, task})  # unlike `await task`, never eats our cancel
        if not task.cancelled():
            task.result()

    async def _connect(self) -> None:
        options = self.options
        self._partitions.clear()
        consumer = self._aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            client_id=options.client_id or f"sagaz-{self._ctx.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset=options.auto_offset_reset,
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            max_poll_interval_ms=options.max_poll_interval_ms,
            **(options.consumer_options or {}),
        )
        consumer.subscribe(self.topics, listener=_rebalance_listener(self, consumer))
        try:
            await consumer.start()
        except BaseException:
            await _stop_consumer(consumer)
            raise
        self._consumer = consumer
        logger.info("Kafka consumer started for %s", self.topics, extra=self._log)

    def _take(self, tp: Any, records: Iterable[Any]) -> None:
        partition = self._partitions.get(tp)
        if partition is None:  # revoked while the batch was on its way
            return
        partition.track(records, self._ctx.clock.now())
        if self._emit is not None and (partition.worker is None or partition.worker.done()):
            name = f"kafka-emit-{tp.topic}-{tp.partition}"
            partition.worker = asyncio.create_task(
                self._emit_loop(partition, self._emit), name=name
            )
        partition.wakeup.set()
        self._update_flow(partition)

    async def _emit_loop(self, partition: PartitionState, emit: Emit) -> None:
        """Emit the partition's records in offset order, what is buffered as one batch (up
        to ``max_poll_records``): admission claims a batch's inbox keys together."""
        buffer, most = partition.buffer, self.options.max_poll_records
        while True:
            if not buffer:
                partition.wakeup.clear()
                await partition.wakeup.wait()
                continue
            if not self._intake.is_set():
                await self._intake.wait()  # paused: the records stay buffered, uncommitted
                continue
            count = min(len(buffer), most)
            deliveries = take_deliveries(self, self._ctx.trigger_id, partition, count)
            try:
                if len(deliveries) == 1:
                    await emit(deliveries[0])
                else:
                    await emit_many(emit, deliveries)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # the pipeline cancelled its own wait (e.g. its queue closed): not fatal to us
                logger.warning("emit was cancelled; the event stays uncommitted", extra=self._log)
            except Exception as exc:  # the pipeline should not raise; if it does, go on
                await self._report(exc, "emit failed; the events stay uncommitted")
            if partition.paused:  # only fetching pauses it (``_take``): here it may resume
                self._update_flow(partition)

    def _update_flow(self, partition: PartitionState) -> None:
        """Hold back a partition whose buffer or unsettled backlog is full (it is left out
        of the polls, see ``_fetchable``); take it again once drained.

        Only that partition stops fetching: the poll loop goes on, so the member stays alive.
        """
        if self._consumer is None or self._partitions.get(partition.tp) is not partition:
            return
        change = partition.flow(*self._limits)
        if change is True:
            if len(partition.outstanding) >= self._limits[1]:  # rare: an old event is held
                logger.warning(
                    "partition %s paused: %d events unsettled since offset %d",
                    partition.tp.partition,
                    len(partition.outstanding),
                    partition.outstanding[0],
                    extra=self._log,
                )
        elif change is False:
            self._all_held_since = None
            self._released.set()
            if self._held_in_client and self._intake.is_set():  # a paused trigger stays paused
                self._held_in_client = False
                with contextlib.suppress(self._errors.IllegalStateError):  # mid-rebalance
                    self._consumer.resume(*(p.tp for p in self._partitions.values()))

    # -- rebalancing -----------------------------------------------------------------------
    async def _on_revoked(self, revoked: Iterable[Any]) -> None:
        """Commit what is contiguous-done, then forget the partitions' in-flight state."""
        gone = [tp for tp in revoked if tp in self._partitions]
        workers = [w for tp in gone if (w := self._partitions[tp].worker) is not None]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self._consumer is not None:
            await self._commit(self._consumer, gone)
        for tp in gone:
            del self._partitions[tp]
        logger.info("partitions revoked: %s", gone, extra=self._log)

    async def _on_assigned(self, assigned: Iterable[Any], consumer: Any) -> None:
        """Start every assigned partition afresh, from its committed offset (paused, while
        the trigger is)."""
        assigned = list(assigned)
        for tp in assigned:
            self._partitions[tp] = PartitionState(tp)
        self._all_held_since, self._held_in_client = None, False
        if assigned and not self._intake.is_set():
            consumer.pause(*assigned)
        self.assignments += 1
        logger.info("partitions assigned: %s", sorted(assigned), extra=self._log)

    # -- dead letters ----------------------------------------------------------------------
    async def publish_dead_letter(self, delivery: Delivery, record: DeadLetterRecord) -> None:
        """Produce the original payload to ``dead_letter_topic`` with ``x-sagaz-*`` headers.

        A no-op without a dead-letter topic (``ctx.dead_letter_topic``: the trigger's option,
        else ``TriggerConfig.dead_letter_topic``).
        Raises aiokafka's error when the broker refuses it, so the caller keeps the event.
        """
        if not self.dead_letter_topic:
            return
        meta = delivery.meta
        headers = {
            "x-sagaz-error": record.error[:4096],
            "x-sagaz-reason": record.reason,
            "x-sagaz-attempts": str(record.attempts),
            "x-sagaz-trigger": record.trigger_id,
            "x-sagaz-source-topic": meta.topic or "",
            "x-sagaz-source-partition": "" if meta.partition is None else str(meta.partition),
            "x-sagaz-source-offset": "" if meta.offset is None else str(meta.offset),
        }
        producer = await self._dead_letter_producer()
        await producer.send_and_wait(
            self.dead_letter_topic,
            _as_bytes(delivery.payload),
            key=meta.key.encode() if isinstance(meta.key, str) else meta.key,
            headers=[(k, v.encode()) for k, v in headers.items()],
        )

    async def _dead_letter_producer(self) -> Any:
        async with self._producer_lock:
            if self._producer is None:
                self._producer = await start_producer(
                    self._aiokafka or require_extra("kafka"),
                    bootstrap_servers=self.bootstrap_servers,
                    **(self.options.producer_options or {}),
                )
            return self._producer

    async def _report(self, exc: BaseException, message: str) -> None:
        logger.warning("%s: %r", message, exc, extra=self._log)
        await self._ctx.report_error(exc)


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, default=str).encode()


async def _stop_consumer(consumer: Any) -> None:
    """``consumer.stop()``, which can raise the cancellation of its own pending fetches while
    the broker is down (aio-libs/aiokafka#647): then finish closing its connections."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # a real cancellation of ours
        await consumer._client.close()


def _rebalance_listener(source: KafkaSource, consumer: Any) -> Any:
    """An aiokafka ``ConsumerRebalanceListener`` bound to ``source`` and its ``consumer``
    (built after the import)."""
    from aiokafka.abc import ConsumerRebalanceListener

    class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await source._on_revoked(revoked)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await source._on_assigned(assigned, consumer)

    return _Listener()
