"""sagaz quick start: one order saga started by HTTP, by files and by a schedule.

Run it (no broker needed: sagas are kept in the SQLite file ./sagaz.db)::

    pip install -e ".[webhook,file]"   # from a clone of the repository
    python examples/quickstart.py

then, in another terminal::

    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"order_id": "A-1", "amount": 42.5}'

or drop a JSON file with the same body into ./inbox. Every minute a cron trigger starts a
small report saga. Ctrl-C (or SIGTERM) stops gracefully: no new events are taken, running
sagas finish, then the store is closed.

Environment variables:

* ``SAGAZ_WEBHOOK_PORT`` (default 8000) and ``SAGAZ_WEBHOOK_HOST`` (default 127.0.0.1);
  every ``TriggerConfig`` field reads ``SAGAZ_<FIELD>``.
* ``SAGAZ_STORE_URL`` (default ``sqlite:///sagaz.db``): ``memory://``, ``sqlite:///path.db``,
  ``postgresql://...`` or ``redis://...``.
* ``QUICKSTART_INBOX`` (default ``inbox``): the directory watched for order files.
* ``QUICKSTART_CARD_LIMIT`` (default 1000): larger charges are declined, so the order is
  compensated and dead-lettered. Raise the limit, then ``sagaz dlq replay ID`` runs the
  declined order again (``sagaz dlq list`` shows the IDs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import sagaz
from sagaz import (
    CronTick,
    FileEvent,
    Saga,
    SagaContext,
    SagaListener,
    TriggerConfig,
    action,
    compensate,
    trigger,
)
from sagaz.storage import store_from_url

INBOX = Path(os.environ.get("QUICKSTART_INBOX", "inbox"))
STORE_URL = os.environ.get("SAGAZ_STORE_URL", "sqlite:///sagaz.db")
CARD_LIMIT = float(os.environ.get("QUICKSTART_CARD_LIMIT", "1000"))


class Order(BaseModel):
    """The body of ``POST /orders`` and the content of an order file."""

    order_id: str
    amount: float = Field(gt=0)


class PrintListener(SagaListener):
    """Prints what happens, one line per event (flushed: fine behind a pipe too)."""

    async def on_saga_start(self, saga_name: str, saga_id: str, ctx: SagaContext) -> None:
        say(f"saga {saga_id} started ({saga_name}, from {ctx.get('source')})")

    async def on_step_success(
        self, saga_name: str, step_name: str, ctx: SagaContext, result: dict[str, Any]
    ) -> None:
        say(f"saga {ctx.saga_id} step {step_name} done")

    async def on_compensation_complete(
        self, saga_name: str, step_name: str, ctx: SagaContext
    ) -> None:
        say(f"saga {ctx.saga_id} step {step_name} compensated")

    async def on_saga_complete(self, saga_name: str, saga_id: str, ctx: SagaContext) -> None:
        say(f"saga {saga_id} completed")

    async def on_saga_failed(
        self, saga_name: str, saga_id: str, ctx: SagaContext, error: BaseException | str
    ) -> None:
        say(f"saga {saga_id} did not complete: {error}")

    async def on_trigger_filtered(self, saga_name: str, event: Any, reason: str) -> None:
        say(f"event for {saga_name} not started: {reason}")


def say(line: str) -> None:
    print(line, flush=True)


class OrderSaga(Saga):
    """Reserve stock, charge, ship; a declined charge releases the stock again."""

    saga_name = "order"
    listeners = [PrintListener()]

    @trigger(source="webhook", path="/orders", method="POST")
    def from_http(self, order: Order) -> dict[str, Any]:
        return {**order.model_dump(), "source": "webhook"}

    @trigger(source="file", path=str(INBOX), pattern="*.json", settle_ms=200)
    def from_file(self, event: FileEvent) -> dict[str, Any]:
        order = Order.model_validate_json(Path(event.path).read_bytes())
        return {**order.model_dump(), "source": f"file {Path(event.path).name}"}

    @action("reserve_stock")
    async def reserve_stock(self, ctx: SagaContext) -> dict[str, Any]:
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve_stock")
    async def release_stock(self, ctx: SagaContext) -> None:
        say(f"saga {ctx.saga_id} releasing {ctx['reservation']}")

    @action("charge_payment")
    async def charge_payment(self, ctx: SagaContext) -> dict[str, Any]:
        if ctx["amount"] > CARD_LIMIT:
            raise RuntimeError(
                f"card declined: {ctx['amount']:g} is over the limit of {CARD_LIMIT:g} "
                "(QUICKSTART_CARD_LIMIT)"
            )
        return {"payment": f"P-{ctx['order_id']}"}

    @action("ship")
    async def ship(self, ctx: SagaContext) -> dict[str, Any]:
        return {"shipped": True}


class ReportSaga(Saga):
    """Every minute: a one-step saga (a nightly report, at demo speed)."""

    saga_name = "minute-report"
    listeners = [PrintListener()]

    @trigger(source="cron", schedule="* * * * *")
    def every_minute(self, tick: CronTick) -> dict[str, Any]:
        return {"scheduled_at": tick.scheduled_at.isoformat(), "source": "cron"}

    @action("report")
    async def report(self, ctx: SagaContext) -> dict[str, Any]:
        return {"reported": ctx["scheduled_at"]}


async def main(inbox: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    config = TriggerConfig()  # reads SAGAZ_WEBHOOK_PORT, SAGAZ_WEBHOOK_HOST, ...
    store = store_from_url(STORE_URL)
    await sagaz.start_triggers(config, store)
    say(
        f"sagaz quick start: POST http://{config.webhook_host}:{config.webhook_port}/orders, "
        f"drop *.json files into {inbox}, store {STORE_URL}; Ctrl-C stops"
    )
    try:
        await stop.wait()
    finally:
        say("stopping: finishing running sagas")
        await sagaz.stop_triggers()  # stop intake, drain, close the sources and the store
        say("stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    INBOX.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(INBOX.resolve()))
