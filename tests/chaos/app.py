"""The app the chaos tests kill: one saga with three steps, started from one source.

Run by :mod:`tests.chaos.supervisor` as ``python -m tests.chaos.app`` and configured by
``CHAOS_*`` environment variables (see :class:`Settings`). It starts the engine with
``sagaz.start_triggers(TriggerConfig(...), store)`` and runs until SIGKILL (the chaos) or
SIGTERM (the graceful stop at the end of a test, which must exit 0).

Every step records its side effect in a PostgreSQL table of the test's own: one row per
``(saga_id, step)``, whose ``attempts`` counts the executions of that step. The test reads
it to count progress and repeated steps.

Events are JSON objects ``{"n": <int>}``; the saga's context is ``{"n": n}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

import asyncpg

import sagaz
from sagaz import Saga, SagaContext, TriggerConfig, WebhookRequest, action, trigger
from sagaz.abc import SagaStore
from sagaz.storage.url import store_from_url

SAGA_NAME = "chaos"
STEPS = ("reserve", "charge", "ship")
SOURCES = ("kafka", "redis", "rabbitmq", "webhook")
WEBHOOK_PATH = "/events"

#: how often a step blocked on the gate file looks for it
GATE_POLL_SECONDS = 0.02
#: how long the poison event's step runs before it kills its process (CHAOS_POISON)
POISON_DELAY = 1.0


@dataclass(frozen=True)
class Settings:
    """What the app is told by its ``CHAOS_*`` environment variables."""

    source: str  # CHAOS_SOURCE: kafka, redis, rabbitmq or webhook
    store_url: str  # CHAOS_STORE_URL: postgresql://...?schema=, redis://...?prefix=, sqlite:///
    side_dsn: str  # CHAOS_SIDE_DSN: the PostgreSQL of the side-effect table
    side_table: str  # CHAOS_SIDE_TABLE
    name: str  # CHAOS_NAME: topic, stream or queue
    group: str  # CHAOS_GROUP: Kafka consumer group or Redis Streams consumer group
    broker: str  # CHAOS_BROKER: Kafka bootstrap servers, Redis URL or AMQP URL
    max_concurrent_sagas: int  # CHAOS_MAX_CONCURRENT_SAGAS
    lease_seconds: float  # CHAOS_LEASE_SECONDS
    worker_id: str | None  # CHAOS_WORKER_ID (default: sagaz's own, unique per process)
    webhook_port: int  # CHAOS_WEBHOOK_PORT
    gate: str | None  # CHAOS_GATE: the first step waits until this file exists
    step_delay: float  # CHAOS_STEP_DELAY: seconds each step takes (pace a run)
    poison: int | None  # CHAOS_POISON: the event whose "charge" step SIGKILLs its process

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        source = env["CHAOS_SOURCE"]
        if source not in SOURCES:
            raise SystemExit(f"CHAOS_SOURCE={source!r} must be one of {SOURCES}")
        return cls(
            source=source,
            store_url=env["CHAOS_STORE_URL"],
            side_dsn=env["CHAOS_SIDE_DSN"],
            side_table=env["CHAOS_SIDE_TABLE"],
            name=env.get("CHAOS_NAME", ""),
            group=env.get("CHAOS_GROUP", ""),
            broker=env.get("CHAOS_BROKER", ""),
            max_concurrent_sagas=int(env.get("CHAOS_MAX_CONCURRENT_SAGAS", "10")),
            lease_seconds=float(env.get("CHAOS_LEASE_SECONDS", "2")),
            worker_id=env.get("CHAOS_WORKER_ID") or None,
            webhook_port=int(env.get("CHAOS_WEBHOOK_PORT", "0")),
            gate=env.get("CHAOS_GATE") or None,
            step_delay=float(env.get("CHAOS_STEP_DELAY", "0")),
            poison=int(env["CHAOS_POISON"]) if env.get("CHAOS_POISON") else None,
        )


class SideEffects:
    """The steps' side effect: a row per ``(saga_id, step)``, ``attempts`` + 1 on a repeat."""

    def __init__(self, pool: Any, table: str) -> None:
        self.pool = pool
        self.insert = (
            f'INSERT INTO "{table}" AS t (saga_id, step, n, attempts) VALUES ($1, $2, $3, 1) '
            "ON CONFLICT (saga_id, step) DO UPDATE SET attempts = t.attempts + 1"
        )

    async def record(self, ctx: SagaContext, step: str) -> None:
        # Two runs of one step at once (a takeover of a live worker's saga) upsert one row:
        # PostgreSQL may end one upsert as a deadlock victim. The count is the test's
        # instrument, not the step under test: the victim's upsert is made again.
        for attempt in range(5):
            try:
                await self.pool.execute(self.insert, ctx.saga_id, step, ctx["n"])
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise


def source_options(settings: Settings) -> dict[str, Any]:
    """The ``@trigger`` options of ``settings.source``."""
    options: dict[str, Any]
    if settings.source == "kafka":
        options = {
            "topic": settings.name,
            "group_id": settings.group,
            "bootstrap_servers": settings.broker,
            # Tansu answers a group join after about session_timeout_ms / 2, and a member
            # restarting in the group waits for the dead one's session to expire
            "session_timeout_ms": 1500,
            "heartbeat_interval_ms": 300,
            "poll_timeout_ms": 100,
            "commit_interval_ms": 200,
        }
    elif settings.source == "redis":
        # each process is a new consumer (the default name is unique): the entries of a
        # killed one are taken over with XAUTOCLAIM once idle for claim_idle_ms
        options = {
            "stream": settings.name,
            "consumer_group": settings.group,
            "url": settings.broker,
            "start_id": "0",
            "claim_idle_ms": 1000,
        }
    elif settings.source == "rabbitmq":
        options = {"queue": settings.name, "url": settings.broker}
    else:
        options = {"path": WEBHOOK_PATH}
    return options


def define_saga(settings: Settings, side: SideEffects) -> type[Saga]:
    """The saga class, with one trigger on ``settings.source`` (registered on definition)."""
    options = source_options(settings)

    async def step(ctx: SagaContext, name: str) -> None:
        await side.record(ctx, name)
        if settings.step_delay:
            await asyncio.sleep(settings.step_delay)

    class ChaosSaga(Saga):
        saga_name = SAGA_NAME

        if settings.source == "webhook":

            @trigger(source="webhook", **options)
            def on_event(self, request: WebhookRequest) -> dict[str, Any]:
                return {"n": request.json()["n"]}

        else:

            @trigger(source=settings.source, **options)
            def on_event(self, event: Any) -> dict[str, Any]:
                return {"n": event["n"]}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            await step(ctx, "reserve")
            if settings.gate is not None:
                # one stat() of a local file per poll: not worth a thread
                while not os.path.exists(settings.gate):  # noqa: ASYNC240
                    await asyncio.sleep(GATE_POLL_SECONDS)

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            await step(ctx, "charge")
            if ctx["n"] == settings.poison:  # a step that kills its worker (as an OOM kill)
                await asyncio.sleep(POISON_DELAY)  # the other sagas in flight go on meanwhile
                os.kill(os.getpid(), signal.SIGKILL)

        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            await step(ctx, "ship")

    return ChaosSaga


def trigger_config(settings: Settings) -> TriggerConfig:
    return TriggerConfig(
        max_concurrent_sagas=settings.max_concurrent_sagas,
        lease_seconds=settings.lease_seconds,
        recovery_interval_seconds=min(settings.lease_seconds / 2, 1.0),
        worker_id=settings.worker_id,
        shutdown_timeout=10.0,
        kafka_bootstrap_servers=settings.broker or "localhost:9092",
        webhook_port=settings.webhook_port,
    )


async def main() -> None:
    settings = Settings.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    pool = await asyncpg.create_pool(settings.side_dsn, min_size=1, max_size=4)
    store: SagaStore = store_from_url(settings.store_url)
    try:
        define_saga(settings, SideEffects(pool, settings.side_table))
        async with store:
            engine = await sagaz.start_triggers(trigger_config(settings), store)
            logging.getLogger(__name__).warning(
                "chaos app running", extra={"worker_id": engine.worker_id}
            )
            try:
                await stop.wait()
            finally:
                await sagaz.stop_triggers()
    finally:
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("CHAOS_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(main())
