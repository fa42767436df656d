"""Stand-ins for the services an order saga calls: inventory, payments, shipping.

In your application these are the clients of real services; here they keep their state in
memory and log what they do, so the saga's steps and compensations can be followed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from examples.order_saga.settings import settings

logger = logging.getLogger(__name__)

#: the countries the stand-in carrier delivers to
SHIPS_TO = frozenset({"DE", "FR", "NL", "BE", "AT", "GB", "US"})


class PaymentDeclined(Exception):
    """The card was declined: nothing was charged."""


class CannotShip(Exception):
    """The carrier does not deliver to the order's country."""


class Inventory:
    def __init__(self) -> None:
        self.reserved: dict[str, str] = {}  # reservation id -> order id

    async def reserve(self, order_id: str) -> str:
        await asyncio.sleep(0.01)  # a network call
        reservation_id = f"R-{uuid.uuid4().hex[:8]}"
        self.reserved[reservation_id] = order_id
        logger.info("order %s: stock reserved (%s)", order_id, reservation_id)
        return reservation_id

    async def release(self, reservation_id: str) -> None:
        order_id = self.reserved.pop(reservation_id, "?")
        logger.info("order %s: stock released (%s)", order_id, reservation_id)


class Payments:
    def __init__(self, card_limit: float) -> None:
        self.card_limit = card_limit

    async def charge(self, order_id: str, amount: float) -> str:
        await asyncio.sleep(0.01)
        if amount > self.card_limit:
            raise PaymentDeclined(
                f"card declined: {amount:g} is over the limit of {self.card_limit:g}"
            )
        payment_id = f"P-{uuid.uuid4().hex[:8]}"
        logger.info("order %s: charged %g (%s)", order_id, amount, payment_id)
        return payment_id

    async def refund(self, order_id: str, payment_id: str) -> None:
        logger.info("order %s: refunded (%s)", order_id, payment_id)


class Shipping:
    async def ship(self, order_id: str, country: str) -> str:
        await asyncio.sleep(0.01)
        if country not in SHIPS_TO:
            raise CannotShip(f"no carrier delivers to {country}")
        tracking = f"T-{uuid.uuid4().hex[:8]}"
        logger.info("order %s: shipped to %s (%s)", order_id, country, tracking)
        return tracking


inventory = Inventory()
payments = Payments(settings.card_limit)
shipping = Shipping()
