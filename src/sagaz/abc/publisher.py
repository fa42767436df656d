"""The outbox contract: :class:`Publisher`."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sagaz.abc.lifecycle import Lifecycle
from sagaz.exceptions import SagazError
from sagaz.records import OutboxMessage

__all__ = ["Publisher"]


class Publisher(Lifecycle, ABC):
    """Publishes outbox messages to a broker; used by :class:`sagaz.outbox.OutboxRelay`.

    ``publish`` returns once the broker has the message and **raises** when it could not be
    published (the relay then retries it later, and publishes nothing after it meanwhile).
    ``start()``/``stop()`` (or ``async with``) acquire and release the connection; a relay
    starts and stops a publisher that was not started when the relay needed it. A subclass
    that overrides them must call ``super().start()``/``super().stop()`` (they keep
    :attr:`started`, which the relay reads).

    >>> class Printer(Publisher):
    ...     async def publish(self, message: OutboxMessage) -> None:
    ...         print(message.topic, message.payload)
    """

    @property
    def started(self) -> bool:
        """Whether ``start()`` was called (and ``stop()`` not since)."""
        return self._started

    @abstractmethod
    async def publish(self, message: OutboxMessage) -> None:
        """Publish one message; raise if the broker did not take it."""

    def _require_started(self) -> None:
        if not self._started:
            raise SagazError(
                f"{type(self).__name__} is not started: use `async with publisher:` or "
                "`await publisher.start()` first (an OutboxRelay starts it in its own start())"
            )
