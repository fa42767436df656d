"""The SQS messages received and not yet settled: kept invisible, then deleted or released.

Used by :class:`sagaz.sources.sqs.source.SQSSource`. A heartbeat extends the visibility of every
unsettled message once half of ``visibility_timeout`` has passed; ``settle(message, "delete")``
(ack) and ``settle(message, "release")`` (nack with requeue: visibility 0) are queued and sent
as ``DeleteMessageBatch`` / ``ChangeMessageVisibilityBatch`` calls of up to 10 entries, every
``flush_interval`` seconds or as soon as 10 are waiting. Failed entries that SQS blames on the
server are retried; the others are logged (the message comes back, and the inbox dedups it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sagaz.backoff import Backoff
from sagaz.clock import Clock

__all__ = ["MAX_BATCH", "ReceivedMessage", "SQSSettlement", "Settle"]

logger = logging.getLogger(__name__)

#: most entries SQS takes in one batch call (and most messages one receive returns)
MAX_BATCH = 10

Settle = Literal["delete", "release"]


@dataclass(slots=True, eq=False)
class ReceivedMessage:
    """A received message until it is settled; ``expires_at`` (monotonic) is when it would
    become visible again."""

    message_id: str
    receipt_handle: str
    raw: dict[str, Any]  # as received: the original Body, attributes...
    expires_at: float
    settled: bool = False


class SQSSettlement:
    """Tracks unsettled messages of one queue; owns the flush and heartbeat tasks."""

    def __init__(
        self,
        client: Any,
        queue_url: Callable[[], Awaitable[str]],
        *,
        visibility_timeout: int,
        flush_interval: float,
        report: Callable[[str, Exception], Awaitable[None]],
        log: dict[str, Any],
        clock: Clock,
    ) -> None:
        self._client = client
        self._clock = clock
        self._queue_url = queue_url
        self.visibility_timeout = visibility_timeout
        self.flush_interval = flush_interval
        self._report = report
        self._log = log
        self._tracked: dict[str, ReceivedMessage] = {}  # by receipt handle
        self._pending: dict[Settle, list[ReceivedMessage]] = {"delete": [], "release": []}
        self._dirty = asyncio.Event()  # something waits to be flushed
        self._full = asyncio.Event()  # a whole batch waits (or we are closing): flush now
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="sagaz-sqs-flush"),
            asyncio.create_task(self._heartbeat_loop(), name="sagaz-sqs-visibility"),
        ]

    @property
    def pending(self) -> int:
        """Deletes and releases queued but not yet sent."""
        return sum(map(len, self._pending.values()))

    def track(self, messages: Iterable[ReceivedMessage]) -> None:
        """Keep these messages invisible until they are settled."""
        self._tracked.update((message.receipt_handle, message) for message in messages)

    def get(self, receipt_handle: str) -> ReceivedMessage | None:
        """The unsettled message with this receipt handle, if any."""
        return self._tracked.get(receipt_handle)

    def settle(self, message: ReceivedMessage, how: Settle) -> None:
        """Stop extending ``message`` and queue its delete or release (once; later calls are
        no-ops)."""
        if message.settled:
            return
        message.settled = True
        self._tracked.pop(message.receipt_handle, None)
        if self._tasks[0].done():
            logger.warning(
                "sqs %s of message %s after stop(): it comes back after its visibility "
                "timeout (the inbox dedups it)",
                how,
                message.message_id,
                extra={**self._log, "message_id": message.message_id},
            )
            return
        pending = self._pending[how]
        pending.append(message)
        self._dirty.set()
        if len(pending) >= MAX_BATCH:
            self._full.set()

    async def close(self, flush_within: float) -> None:
        """Release what is still unsettled, flush everything (giving up after
        ``flush_within`` seconds), and end the tasks."""
        for message in list(self._tracked.values()):
            self.settle(message, "release")  # nobody will settle it now: redeliver it soon
        flusher, heartbeat = self._tasks
        heartbeat.cancel()
        self._closing = True
        self._dirty.set()
        self._full.set()
        done, _ = await asyncio.wait({flusher, heartbeat}, timeout=flush_within)
        if flusher not in done:
            flusher.cancel()
            await asyncio.wait({flusher})
            logger.warning(
                "sqs: %d delete(s)/release(s) not flushed within %.1fs; those messages come "
                "back after their visibility timeout (the inbox dedups them)",
                self.pending,
                flush_within,
                extra=self._log,
            )
        elif not flusher.cancelled() and flusher.exception() is not None:
            logger.error("sqs flush task failed", exc_info=flusher.exception(), extra=self._log)

    # -- deletes and releases --------------------------------------------------------------
    async def _flush_loop(self) -> None:
        backoff = Backoff(self._clock, initial=0.5, maximum=30.0)
        while True:
            await self._dirty.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._full.wait()
            self._dirty.clear()
            self._full.clear()
            flushed = await self._flush_pending()
            if self._closing and not self.pending:
                return
            if flushed:
                backoff.reset()
            else:
                await backoff.sleep(0.2 if self._closing else None)
                self._dirty.set()

    async def _flush_pending(self) -> bool:
        jobs: list[Coroutine[Any, Any, bool]] = []
        hows: tuple[Settle, ...] = ("delete", "release")
        for how in hows:
            pending, self._pending[how] = self._pending[how], []
            jobs.extend(self._settle_batch(how, chunk) for chunk in _chunks(pending))
        return all(await asyncio.gather(*jobs))

    async def _settle_batch(self, how: Settle, chunk: list[ReceivedMessage]) -> bool:
        """One batch call; False when entries were put back to retry."""
        try:
            failed = await self._batch_call(how, chunk, 0)
        except asyncio.CancelledError:
            self._pending[how].extend(chunk)
            raise
        except Exception as exc:
            self._pending[how].extend(chunk)
            await self._report(f"{how} of {len(chunk)} message(s)", exc)
            return False
        retry = [message for message, entry in failed if not entry.get("SenderFault")]
        for message, entry in failed:
            logger.warning(
                "sqs %s of message %s failed: %s %s%s",
                how,
                message.message_id,
                entry.get("Code"),
                entry.get("Message", ""),
                "; retrying" if message in retry else "; it comes back (the inbox dedups it)",
                extra={**self._log, "message_id": message.message_id},
            )
        self._pending[how].extend(retry)
        logger.debug("sqs %s of %d message(s)", how, len(chunk) - len(failed), extra=self._log)
        return not retry

    async def _batch_call(
        self, how: Settle | Literal["extend"], chunk: list[ReceivedMessage], visibility: int
    ) -> list[tuple[ReceivedMessage, dict[str, Any]]]:
        """Run one batch call; return the failed entries with SQS's answer for each."""
        entries: list[dict[str, Any]] = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
        ]
        queue_url = await self._queue_url()
        if how == "delete":
            response = await self._client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        else:
            for entry in entries:
                entry["VisibilityTimeout"] = visibility
            response = await self._client.change_message_visibility_batch(
                QueueUrl=queue_url, Entries=entries
            )
        return [(chunk[int(entry["Id"])], entry) for entry in response.get("Failed", [])]

    # -- visibility heartbeat --------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = min(max(self.visibility_timeout / 4, 0.1), 10.0)
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for something
            now = time.monotonic()
            due = [
                message
                for message in self._tracked.values()
                if message.expires_at - now <= self.visibility_timeout / 2
            ]
            if due:
                await asyncio.gather(*(self._extend(chunk, now) for chunk in _chunks(due)))

    async def _extend(self, chunk: list[ReceivedMessage], sent_at: float) -> None:
        try:
            failed = await self._batch_call("extend", chunk, self.visibility_timeout)
        except Exception as exc:
            await self._report(f"visibility extension of {len(chunk)} message(s)", exc)
            return
        lost = {id(message) for message, _ in failed}
        for message in chunk:
            if id(message) not in lost:
                message.expires_at = sent_at + self.visibility_timeout
        for message, entry in failed:
            if message.settled:
                continue  # acked meanwhile: its receipt handle is gone, which is fine
            self._tracked.pop(message.receipt_handle, None)  # retrying would fail the same way
            logger.warning(
                "sqs cannot extend the visibility of message %s (%s %s); it may be "
                "redelivered while its saga runs (the inbox dedups it)",
                message.message_id,
                entry.get("Code"),
                entry.get("Message", ""),
                extra={**self._log, "message_id": message.message_id},
            )
        logger.debug("sqs visibility extended for %d message(s)", len(chunk), extra=self._log)


def _chunks(messages: list[ReceivedMessage]) -> Iterator[list[ReceivedMessage]]:
    for start in range(0, len(messages), MAX_BATCH):
        yield messages[start : start + MAX_BATCH]
