"""``StoreOutage``: what the engine does while its store cannot be reached.

Every store raises :class:`~sagaz.exceptions.StoreUnavailableError` when its server is away
(restarted, unreachable). A pipeline stage that gets one calls :meth:`StoreOutage.wait`: the
first call of an outage logs **one** warning and starts **one** probe; every caller then waits
until the probe finds the store back, which logs once more and wakes them all. Meanwhile:

* intake pauses: admission holds the deliveries that can wait (a broker source's ``emit`` does
  not return, so the source stops fetching, exactly as under ``block`` backpressure) and
  refuses the others at once (the webhook answers 503 + ``Retry-After``);
* nothing is acked: a saga whose store write failed waits too, keeping its delivery, and
  resumes from its last checkpoint once the store is back (so a Kafka partition never commits
  past it, and no message needs to come back from the broker);
* the heartbeat, recovery and cleanup loops skip their passes quietly.

The probe renews this worker's leases (a cheap write that also proves the store takes writes)
with a :class:`~sagaz.backoff.Backoff` on the engine's clock. Renewing first matters: a
long outage lets the leases lapse, and the recovery loop must not take this worker's own
in-flight sagas for orphans when the store comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from sagaz.backoff import Backoff
from sagaz.clock import Clock
from sagaz.exceptions import StoreUnavailableError

if TYPE_CHECKING:
    from sagaz.abc import SagaStore

__all__ = ["StoreOutage"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StoreOutage:
    """The store's availability as one engine sees it (see the module docstring).

    ``probe_initial`` and ``probe_maximum`` bound the :class:`~sagaz.backoff.Backoff`
    between probes: after the store is back, intake resumes within ``probe_maximum`` seconds.
    """

    probe_initial: float = 0.1
    probe_maximum: float = 2.0

    def __init__(
        self,
        store: SagaStore,
        clock: Clock,
        worker_id: str,
        lease_until: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.clock = clock
        self.worker_id = worker_id
        self._lease_until = lease_until
        self._available = asyncio.Event()
        self._available.set()
        #: False from the first :class:`StoreUnavailableError` until the probe succeeds (the
        #: event's state as a plain attribute: every admission reads it)
        self.available = True
        self._probe: asyncio.Task[None] | None = None
        self._since = 0.0
        #: outages seen so far (each logged once when it began and once when it ended)
        self.outages = 0
        #: calls that waited for the store during the current or the last outage
        self.waits = 0

    def down(self, error: StoreUnavailableError) -> None:
        """Record that the store is unavailable, without waiting; the first call of an outage
        logs the warning and starts the probe."""
        if not self._available.is_set():
            return
        self._available.clear()
        self.available = False
        self.outages += 1
        self.waits = 0
        self._since = self.clock.monotonic()
        logger.warning(
            "the store is unavailable: %s. Intake is paused and nothing is acknowledged until "
            "it is back; sagas resume from their last checkpoint then",
            error,
            extra={"worker_id": self.worker_id, "store": repr(self.store)},
        )
        self._probe = asyncio.create_task(self._probe_until_back(), name="sagaz-store-probe")

    async def wait(
        self, error: StoreUnavailableError, *, until: asyncio.Event | None = None
    ) -> None:
        """Record the outage (:meth:`down`) and wait until the store is back, or until
        ``until`` is set (the caller is stopping)."""
        self.down(error)
        await self.wait_available(until=until)

    async def retry(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await ``operation()`` (store writes, then perhaps an ack) until the store takes
        it, waiting out each outage that interrupts it (:meth:`wait`); its result. Any other
        error is the caller's."""
        while True:
            try:
                return await operation()
            except StoreUnavailableError as exc:
                await self.wait(exc)

    async def wait_available(self, *, until: asyncio.Event | None = None) -> None:
        """Return at once while the store is available, else when it is back, or when
        ``until`` is set. A cancellation of the caller propagates."""
        if self._available.is_set() or (until is not None and until.is_set()):
            return
        self.waits += 1
        if until is None:
            await self._available.wait()
            return
        back = asyncio.ensure_future(self._available.wait())
        stopping = asyncio.ensure_future(until.wait())
        try:
            await asyncio.wait({back, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (back, stopping):
                future.cancel()
            await asyncio.wait({back, stopping})

    async def _probe_until_back(self) -> None:
        backoff = Backoff(self.clock, initial=self.probe_initial, maximum=self.probe_maximum)
        while True:
            await backoff.sleep()
            try:
                await self.store.renew_leases(self.worker_id, self._lease_until())
            except StoreUnavailableError:
                continue
            except Exception:  # answering, but wrongly: it is not back yet; say why
                logger.exception("probing the store failed", extra={"worker_id": self.worker_id})
                continue
            break
        self._available.set()
        self.available = True
        logger.warning(
            "the store is back after %.1fs (%d operation(s) waited for it); intake resumed",
            self.clock.monotonic() - self._since,
            self.waits,
            extra={"worker_id": self.worker_id, "store": repr(self.store)},
        )

    async def close(self) -> None:
        """Stop probing (engine shutdown; whoever still waits is cancelled by its owner)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
