"""``JointDeliveries``: the deliveries of one saga in flight here, settled together once.

A redelivered message (a lost ack, a broker reconnect) or one sent twice while its saga is
being admitted, queued or running here joins the first delivery instead of meeting the inbox
(which would hand our own claim back): :class:`~sagaz.engine.admission.Admission` tracks
them by saga id until the first settlement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sagaz._aio import DONE
from sagaz.events import Delivery

__all__ = ["JointDeliveries"]


class JointDeliveries:
    """The deliveries of one saga, from admission until the first of them is settled, all
    settled together, once; that first settlement ends the tracking (a later delivery of the
    key then meets the inbox)."""

    __slots__ = ("first_ack", "first_nack", "in_flight", "more", "saga_id", "settled")

    def __init__(self, first: Delivery, in_flight: dict[str, JointDeliveries], saga_id: str):
        # the source's own ``ack`` and ``nack`` of ``first``, whose attributes
        # :meth:`~sagaz.engine.admission.Admission.admit` then points at this object; not
        # ``first`` itself, which would make a reference cycle only the collector frees
        ack, nack = first.ack, first.nack
        if isinstance(ack, JointDeliveries):  # the same delivery emitted again (settled before)
            nack = ack.first_nack
            ack = ack.first_ack
        self.first_ack: Callable[[], Awaitable[None]] = ack
        self.first_nack: Callable[[bool], Awaitable[None]] = nack
        #: the deliveries that joined ``first`` (no list per event while there is none)
        self.more: list[Delivery] | None = None
        self.in_flight = in_flight
        self.saga_id = saga_id
        self.settled = False

    def __call__(self, requeue: bool | None = None) -> Awaitable[None]:
        """:meth:`ack` when called without an argument, :meth:`nack` with one.

        The tracked delivery's ``ack`` and ``nack`` are both this object, not two bound
        methods: a queued event then holds two garbage-collected objects fewer, which a
        deep queue would otherwise promote to the oldest generation with it (and so bring
        on full collections).

        Not a coroutine of its own (once per event): in the usual case, that no redelivery
        joined the first delivery, the source's own ack or nack, for the caller to await."""
        # forget it (inline: once per event): a later delivery of the key meets the inbox
        if self.settled:
            return DONE  # settling a saga's deliveries a second time does nothing
        self.settled = True
        if self.in_flight.get(self.saga_id) is self:
            del self.in_flight[self.saga_id]
        if requeue is None:
            if self.more is None:
                return self.first_ack()
            return self._each(self.first_ack(), lambda delivery: delivery.ack())
        if self.more is None:
            return self.first_nack(requeue)
        return self._each(self.first_nack(requeue), _nacker(requeue))

    def join(self, delivery: Delivery) -> None:
        """Settle ``delivery`` with the first one."""
        if self.more is None:
            self.more = []
        self.more.append(delivery)

    def ack(self) -> Awaitable[None]:
        """Ack every delivery of the saga (once: a later settlement does nothing)."""
        return self()

    def nack(self, requeue: bool) -> Awaitable[None]:
        """Nack every delivery of the saga (once: a later settlement does nothing)."""
        return self(requeue)

    async def _each(
        self, first: Awaitable[None], settle: Callable[[Delivery], Awaitable[None]]
    ) -> None:
        error: Exception | None = None
        try:
            await first
        except Exception as exc:  # one failing must not skip the others
            error = exc
        for delivery in self.more or ():
            try:
                await settle(delivery)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error


def _nacker(requeue: bool) -> Callable[[Delivery], Awaitable[None]]:
    """What nacks each further delivery (a closure made here, not in ``__call__``: there,
    ``requeue`` would be a cell made at every settlement)."""
    return lambda delivery: delivery.nack(requeue)
