"""Settling and committing a Kafka source's offsets: a delivery's ack marks its offset
settled, and the commits (every ``commit_interval_ms``, after ``commit_every`` settlements, on
rebalance and on stop) cover each partition's contiguous settled offsets.

:class:`OffsetCommits` is that half of :class:`~sagaz.sources.kafka.source.KafkaSource` (which
inherits it); :class:`RecordSettler` is one record's ``ack``/``nack``. No aiokafka import here:
its errors come through the source's ``_errors`` (``aiokafka.errors``, loaded at start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

from sagaz._aio import DONE, wait_event
from sagaz.sources.kafka.partitions import PartitionState
from sagaz.triggers.options.kafka import KafkaOptions

__all__ = ["OffsetCommits", "RecordSettler"]

logger = logging.getLogger(__name__)


class OffsetCommits:
    """The settle-and-commit path of a Kafka consumer (a base of ``KafkaSource``)."""

    options: KafkaOptions
    _partitions: dict[Any, PartitionState]
    _errors: Any
    _consumer: Any
    _commit_lock: asyncio.Lock
    _commit_wanted: asyncio.Event
    _settled_since_commit: int
    #: ``resumes_at(max_buffered_per_partition)``: a held-back partition with more buffered
    #: records stays held back whatever settles
    _half_buffered: int
    _last_records_at: float
    _log: dict[str, Any]

    def _update_flow(self, partition: PartitionState) -> None:
        raise NotImplementedError  # KafkaSource's: hold back or release a partition

    async def _report(self, exc: BaseException, message: str) -> None:
        raise NotImplementedError  # KafkaSource's: log and tell the engine

    async def commit(self) -> None:
        """Commit the contiguous settled offsets now (this also happens every
        ``commit_interval_ms``, after ``commit_every`` settlements, on rebalance and on stop)."""
        if self._consumer is not None:
            await self._commit(self._consumer)

    async def _commit_loop(self) -> None:
        """Commit periodically; probe the broker when no record came for a while.

        aiokafka retries a lost broker internally and only logs it, so without the probe an
        outage would look like an idle topic to the engine's listeners.
        """
        loop, probe_every = (
            asyncio.get_running_loop(),
            self.options.health_check_interval_ms / 1000,
        )
        probed_at, unreachable = loop.time(), False
        while True:
            # not asyncio.wait_for: on 3.11 it can swallow the cancel that stops this loop
            await wait_event(self._commit_wanted, self.options.commit_interval_ms / 1000)
            self._commit_wanted.clear()
            try:
                await self.commit()
            except Exception as exc:  # keep committing: a dead committer would stall silently
                await self._report(exc, "unexpected error while committing")
            now = loop.time()
            if self._consumer is None or now - max(probed_at, self._last_records_at) < probe_every:
                continue
            probed_at = now
            try:
                async with asyncio.timeout(probe_every):
                    await self._consumer.topics()
            except (self._errors.KafkaError, TimeoutError) as exc:
                unreachable = True
                await self._report(exc, "Kafka broker unreachable; aiokafka keeps reconnecting")
            else:
                if unreachable:
                    logger.info("Kafka broker reachable again", extra=self._log)
                unreachable = False

    async def _commit(self, consumer: Any, only: Iterable[Any] | None = None) -> None:
        """Commit the contiguous settled offsets of ``only`` (default: every partition)."""
        async with self._commit_lock:
            parts = self._partitions
            chosen = parts.values() if only is None else [parts[tp] for tp in only if tp in parts]
            due = [p for p in chosen if p.commit_due]
            if not due:
                return
            self._settled_since_commit = 0
            offsets = {p.tp: p.commit_offset for p in due}
            try:
                # aiokafka retries a commit until the coordinator answers: bound it
                async with asyncio.timeout(self.options.commit_timeout_ms / 1000):
                    await consumer.commit(offsets)
            except (self._errors.IllegalStateError, self._errors.CommitFailedError) as exc:
                # a rebalance is under way; the revoke callback commits again before it ends
                logger.info("commit skipped during a rebalance: %r", exc, extra=self._log)
                return
            except (self._errors.KafkaError, TimeoutError) as exc:
                await self._report(exc, "Kafka commit failed; events may be redelivered")
                return
            for p in due:
                p.committed_offset = offsets[p.tp]
            logger.debug("committed %s", offsets, extra=self._log)


class RecordSettler:
    """A delivery's ``ack()`` and ``nack(requeue)``: the first call counts. One object per
    record (a closure would hold four cells and a function until the record settles)."""

    __slots__ = ("offset", "partition", "settled", "source")

    def __init__(self, source: OffsetCommits, partition: PartitionState, offset: int) -> None:
        self.source, self.partition, self.offset = source, partition, offset
        self.settled = False

    def __call__(self, requeue: bool = False) -> Awaitable[None]:
        """Settle the record at once; the answer is already done (no coroutine per ack).

        ``nack(requeue=True)`` leaves the offset uncommitted; an ack, or ``nack(False)``,
        marks it settled (its commit follows, see :class:`OffsetCommits`). Inline, once per
        record: no call of the source's own."""
        if self.settled or requeue:
            self.settled = True
            return DONE
        self.settled = True
        source, partition = self.source, self.partition
        if source._partitions.get(partition.tp) is not partition:
            return DONE  # revoked since: the partition's new owner redelivers the event
        partition.settle(self.offset)
        # a held-back partition resumes only once its buffer is half drained (see
        # ``PartitionState.flow``): until then no settlement can release it
        if partition.paused and len(partition.buffer) <= source._half_buffered:
            source._update_flow(partition)
        source._settled_since_commit += 1
        if source._settled_since_commit >= source.options.commit_every:
            source._commit_wanted.set()
        return DONE
