"""A saga started by an in-process event, on an SQLite store (no broker, no server)."""

import asyncio

from pydantic import BaseModel

import sagaz
from sagaz import Saga, SagaContext, action, compensate, trigger
from sagaz.storage import SQLiteSagaStore


class OrderPlaced(BaseModel):
    order_id: str
    amount: float


class OrderSaga(Saga):
    saga_name = "orders"

    @trigger(source="memory", channel="orders", idempotency_key=lambda e: e.order_id)
    def on_order(self, event: OrderPlaced) -> dict | None:
        if event.amount <= 0:
            return None  # filtered: no saga
        return {"order_id": event.order_id, "amount": event.amount}

    @action("reserve")
    async def reserve(self, ctx: SagaContext) -> dict:
        return {"reservation": f"r-{ctx['order_id']}"}

    @compensate("reserve")
    async def release(self, ctx: SagaContext) -> None:
        print("released", ctx["reservation"])

    @action("charge")
    async def charge(self, ctx: SagaContext) -> dict:
        return {"charged": ctx["amount"]}


async def main() -> None:
    async with SQLiteSagaStore("orders.db") as store:
        engine = await sagaz.start_triggers(store=store)
        try:
            order = {"order_id": "o-1", "amount": 25}
            for saga_id in await sagaz.fire_event("orders", order):
                result = await engine.wait_for(saga_id, timeout=10)
                print(result.status, result.context)
            # the same order again (or the script run again): the inbox knows its key
            print("accepted again:", await sagaz.fire_event("orders", order))
        finally:
            await sagaz.stop_triggers()


if __name__ == "__main__":
    asyncio.run(main())
