"""The transactional outbox relay: publish what steps emitted, at least once, in order per saga.

A step calls ``ctx.emit(topic, payload)``; the message is written to the store's outbox in the
same transaction as the step's checkpoint. :class:`OutboxRelay` reads the unsent messages in
id order, publishes them with a :class:`Publisher` and marks them sent:

>>> from sagaz.outbox import KafkaPublisher, OutboxRelay
>>> async with OutboxRelay(store, KafkaPublisher("localhost:9092")):  # doctest: +SKIP
...     await serve_forever()

**At least once.** A message is marked sent only after the broker confirmed it, so a crash
(or a failed mark) between the two publishes it again. Consumers deduplicate on the pair
(saga id, outbox id): the Kafka headers ``sagaz-saga-id``/``sagaz-outbox-id``, the RabbitMQ
``message_id`` ``"<saga id>:<outbox id>"``, the Redis fields ``saga_id``/``outbox_id``.

**In order per saga.** Messages are published one at a time, in id order; when one fails,
the rest of the batch waits for the retry, so a later message never overtakes an earlier one.
A message that can never be published (say, an unroutable RabbitMQ topic) therefore holds back
the whole outbox; the relay logs a warning at every retry.

**One active relay per store.** Run a relay in every instance of the service: they share
one lease in the store (:data:`LEASE_NAME`, see :meth:`sagaz.abc.SagaStore.acquire_lease`),
and only its holder publishes; the others stand by and try to take it every
``poll_interval``. The holder renews it every third of ``lease_seconds`` (on its clock) and
publishes only while its own reckoning says it still holds it (``lease_seconds`` from before
its last renewal), so two relays never publish at once. When the holder dies its lease
expires and a standby takes over within about ``lease_seconds``; a holder that stops
releases it, so another takes over at once. The new holder publishes what is unsent, from
the oldest message on: the messages the dead one published but had not marked sent are
published again (at least once), and per-saga order holds across the handover.

The store belongs to the caller: start it before the relay and stop it after. The publishers
(:class:`KafkaPublisher`, :class:`RabbitMQPublisher`, :class:`RedisStreamPublisher`, or your
own :class:`Publisher`) are importable from :mod:`sagaz.outbox` too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sagaz.abc import Lifecycle, Publisher, SagaStore
from sagaz.backoff import Backoff
from sagaz.clock import Clock, SystemClock
from sagaz.exceptions import ConfigurationError
from sagaz.records import OutboxMessage

__all__ = ["LEASE_NAME", "OutboxRelay"]

logger = logging.getLogger(__name__)

LEASE_NAME = "sagaz.outbox-relay"
"""The store lease that makes one relay per store the active one."""

_OnError = Callable[[BaseException, OutboxMessage | None], Awaitable[None] | None]
"""``on_error(exc, message)``: ``message`` is the one that failed to publish, or ``None`` when
the store failed. Sync or async; what it raises is logged and ignored."""


class OutboxRelay(Lifecycle):
    """Publishes the outbox of ``store`` with ``publisher``; see the module docstring.

    ``start()`` (or ``async with``) runs one task that loops: fetch up to ``batch_size``
    unsent messages, publish them in order, mark the published ones sent. After a full batch
    it goes on at once, otherwise it sleeps ``poll_interval`` seconds. After a failure (of the
    publisher or of the store) it logs a warning, calls ``on_error``, and waits before the next
    try: a :class:`sagaz.backoff.Backoff` on ``clock`` of about ``poll_interval * 2**n`` seconds
    after ``n`` failures in a row (jittered: between half that and that, at most
    ``max_backoff``); the task lives until ``stop()``.

    ``relay_once()`` publishes one batch without the task (tests, or your own scheduling).

    Only the holder of the store's relay lease publishes (see the module docstring); it is
    taken for ``lease_seconds`` and renewed every third of that, and a standby relay tries to
    take it every ``poll_interval``. ``holder`` names this relay in it (default: host,
    process id and a random part); :attr:`active` says whether this relay holds it.

    The relay starts ``publisher`` if it is not started yet, and then also stops it in its own
    ``stop()``; a publisher you started yourself is yours to stop. The store is never started
    or stopped by the relay.
    """

    def __init__(
        self,
        store: SagaStore,
        publisher: Publisher,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        max_backoff: float = 30.0,
        clock: Clock | None = None,
        on_error: _OnError | None = None,
        lease_seconds: float = 10.0,
        holder: str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size={batch_size!r} must be a positive integer")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval={poll_interval!r} must be > 0 seconds")
        if not max_backoff >= poll_interval:
            raise ConfigurationError(
                f"max_backoff={max_backoff!r} must be >= poll_interval={poll_interval!r} seconds"
            )
        if not lease_seconds > 0:
            raise ConfigurationError(f"lease_seconds={lease_seconds!r} must be > 0 seconds")
        self.store = store
        self.publisher = publisher
        self.lease_seconds = lease_seconds
        #: this relay's name in the lease
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.clock: Clock = clock or SystemClock()
        self.on_error = on_error
        #: messages this relay published and marked sent so far
        self.published = 0
        #: failures so far (publisher and store)
        self.errors = 0
        self._backoff = Backoff(
            self.clock, initial=min(poll_interval * 2, max_backoff), maximum=max_backoff
        )
        self._owns_publisher = False
        self._task: asyncio.Task[None] | None = None
        self._batch_lock = asyncio.Lock()
        self._log = {"publisher": type(publisher).__name__, "holder": self.holder}
        #: on the relay's clock: until when it may publish, and when to renew the lease
        self._held_until: float | None = None
        self._renew_at = 0.0
        self._standing_by = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the publisher (unless it runs already) and the relay task. Idempotent."""
        if self._task is not None:
            return
        await self._ensure_publisher()
        self._task = asyncio.create_task(self._run(), name="sagaz-outbox-relay")
        await super().start()
        logger.info("outbox relay started", extra=self._log)

    async def stop(self) -> None:
        """Cancel the relay task, then stop the publisher if the relay started it. Idempotent.

        A message whose publish was interrupted is not marked sent: it is published again by
        the next relay (at least once)."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait({task})  # the loop ends quietly; our own cancel propagates
                if not task.cancelled() and task.exception() is not None:
                    logger.warning(
                        "outbox relay task ended with %r", task.exception(), extra=self._log
                    )
                logger.info("outbox relay stopped", extra=self._log)
            await self._release_lease()
        finally:
            try:
                if self._owns_publisher:
                    self._owns_publisher = False
                    await self.publisher.stop()
            finally:
                await super().stop()

    @property
    def failures(self) -> int:
        """Consecutive failed batches (0 after a batch that went through)."""
        return self._backoff.attempts

    @property
    def running(self) -> bool:
        """Whether the relay task runs (between ``start()`` and ``stop()``)."""
        return self._task is not None and not self._task.done()

    @property
    def active(self) -> bool:
        """Whether this relay holds the store's relay lease (so it is the one publishing)."""
        return self._held_until is not None and self.clock.monotonic() < self._held_until

    # -- the lease -------------------------------------------------------------------------
    async def _hold_lease(self) -> bool:
        """Whether this relay may publish now: take the lease, or renew it once a third of
        its time has passed (a store call only then). A store error propagates."""
        now = self.clock.monotonic()
        if self._held_until is not None and now < self._renew_at:
            return True
        ttl = self.lease_seconds
        held = self._held_until is not None and now < self._held_until
        if held:
            held = await self.store.renew_lease(LEASE_NAME, self.holder, ttl)
        if not held:
            held = await self.store.acquire_lease(LEASE_NAME, self.holder, ttl)
        was_active, self._held_until = self._held_until is not None, None
        if held:  # valid until ttl after the call began, whatever the store's clock says
            self._held_until, self._renew_at = now + ttl, now + ttl / 3
            if not was_active:
                self._standing_by = False
                logger.info("outbox relay holds the lease: publishing", extra=self._log)
        elif was_active:
            logger.warning(
                "outbox relay lost the lease (it expired before a renewal): standing by",
                extra=self._log,
            )
        elif not self._standing_by:
            self._standing_by = True
            logger.info("another outbox relay holds the lease: standing by", extra=self._log)
        return held

    async def _release_lease(self) -> None:
        """Hand the lease over at once (``stop()``); a store error only delays the handover
        until the lease expires."""
        if self._held_until is None:
            return
        self._held_until = None
        try:
            await self.store.release_lease(LEASE_NAME, self.holder)
        except Exception as exc:
            logger.warning(
                "releasing the outbox relay lease failed; another relay takes over when it "
                "expires: %r",
                exc,
                extra=self._log,
            )

    async def _ensure_publisher(self) -> None:
        if not self.publisher.started:
            await self.publisher.start()
            self._owns_publisher = True

    # -- relaying --------------------------------------------------------------------------
    async def relay_once(self) -> int:
        """Publish one batch (at most ``batch_size`` messages) in order; return how many were
        published and marked sent.

        A publish error is reported (warning and ``on_error``), not raised: the messages
        before it are marked sent, that one and the rest stay for the next call. A store error
        is raised. Starts the publisher if needed (then ``stop()`` the relay to stop it).
        Publishes nothing (0) while another relay holds the store's relay lease.
        """
        published, _, _ = await self._relay_batch()
        return published

    async def _relay_batch(self) -> tuple[int, int, BaseException | None]:
        """(published, fetched, publish error) of one batch; store errors propagate."""
        async with self._batch_lock:
            await self._ensure_publisher()
            if not await self._hold_lease():
                return 0, 0, None
            batch = await self.store.fetch_outbox(self.batch_size)
            done: list[int] = []
            error: BaseException | None = None
            try:
                for message in batch:
                    if not await self._hold_lease():
                        break  # lost it: the new holder publishes the rest
                    try:
                        await self.publisher.publish(message)
                    except (Exception, asyncio.CancelledError) as exc:
                        if _cancelled(exc):
                            raise
                        error = exc
                        await self._report(
                            exc,
                            message,
                            f"publishing outbox message to {message.topic!r} failed; it and "
                            "the messages after it are retried later",
                        )
                        break
                    if message.id is not None:
                        done.append(message.id)
                if done:
                    await self.store.mark_outbox_sent(done)
            except asyncio.CancelledError:  # stop(): mark what the broker took, then go
                if done:  # (again, if stop() interrupted the mark: marking is idempotent)
                    await self._mark_quietly(done)
                raise
            if done:
                self.published += len(done)
                logger.debug("published %d outbox messages", len(done), extra=self._log)
            return len(done), len(batch), error

    async def _mark_quietly(self, ids: list[int]) -> None:
        """Mark ``ids`` sent while the relay is being cancelled; a store error is logged (the
        messages are published again later), so that it never swallows the cancellation."""
        try:
            await self.store.mark_outbox_sent(ids)
            self.published += len(ids)
        except Exception as exc:
            logger.warning(
                "marking %d published outbox messages failed during stop; they will be "
                "published again: %r",
                len(ids),
                exc,
                extra=self._log,
            )

    async def _run(self) -> None:
        while True:
            try:
                _, fetched, error = await self._relay_batch()
            except (Exception, asyncio.CancelledError) as exc:
                if _cancelled(exc):
                    raise
                error, fetched = exc, 0  # the store failed: report, back off, go on
                await self._report(exc, None, "outbox relay failed; retrying")
            if error is not None:
                await self._backoff.sleep()
                continue
            self._backoff.reset()
            if fetched >= self.batch_size:
                await asyncio.sleep(0)  # more to send: go on, but let others run first
            else:
                await self.clock.sleep(self.poll_interval)

    async def _report(self, exc: BaseException, message: OutboxMessage | None, text: str) -> None:
        self.errors += 1
        extra: dict[str, Any] = {**self._log, "error": repr(exc)}
        if message is not None:
            extra.update(saga_id=message.saga_id, outbox_id=message.id, topic=message.topic)
        logger.warning("%s: %r", text, exc, extra=extra)
        if self.on_error is None:
            return
        try:
            result = self.on_error(exc, message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("the outbox relay's on_error callback raised", extra=self._log)


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of the current task (``stop()``), not a
    ``CancelledError`` that a driver raised for its own reasons (e.g. its channel closed)."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
