"""The app of the cluster-limit tests: one one-step saga whose trigger has a cluster limit.

Run by :mod:`tests.chaos.supervisor` as ``python -m tests.chaos.limits_app``, configured like
:mod:`tests.chaos.app` (``CHAOS_*``; not webhook) and by:

- ``CHAOS_LIMIT``: ``key`` (``concurrency_key=lambda e: e["key"]``) or ``rate``
  (``rate_limit_per_second=CHAOS_RATE``), both with ``limit_scope="cluster"``;
- ``CHAOS_SCOPE``: ``cluster`` (default) or ``process``.

Events are ``{"n": <int>, "key": <str>}``. The trigger method numbers the events in the order
this process receives them (``arrival``, with the worker id in ``arrived_at`` and the delivery's
``EventMeta.attempt``); the step writes one row per run to the side table (:class:`RunTable`):
start and end time on the database's clock, the worker that ran it, and that numbering.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
from typing import Any

import asyncpg

import sagaz
from sagaz import EventMeta, Saga, SagaContext, action, trigger
from sagaz.abc import SagaStore
from sagaz.storage.url import store_from_url
from tests.chaos.app import SAGA_NAME, Settings, source_options, trigger_config

__all__ = ["RunTable", "define_saga"]


class RunTable:
    """One row per run of the step: ``(n, key, worker, arrival, arrived_at, attempt,
    started_at, ended_at)``; ``ended_at`` stays NULL for a run a kill cut short."""

    def __init__(self, pool: Any, table: str) -> None:
        self.pool = pool
        self.table = table

    @staticmethod
    def create_sql(table: str) -> str:
        return (
            f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, n integer NOT NULL, '
            "key text NOT NULL, worker text NOT NULL, arrival integer NOT NULL, "
            "arrived_at text NOT NULL, attempt integer NOT NULL, "
            "started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)"
        )

    async def started(self, ctx: SagaContext, worker: str) -> int:
        run: int = await self.pool.fetchval(
            f'INSERT INTO "{self.table}" (n, key, worker, arrival, arrived_at, attempt) '
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            ctx["n"],
            ctx["key"],
            worker,
            ctx["arrival"],
            ctx["arrived_at"],
            ctx["attempt"],
        )
        return run

    async def ended(self, run: int) -> None:
        await self.pool.execute(
            f'UPDATE "{self.table}" SET ended_at = clock_timestamp() WHERE id = $1', run
        )


def define_saga(settings: Settings, runs: RunTable, worker: str) -> type[Saga]:
    """The saga class, registered on definition."""
    env = os.environ
    limit = env.get("CHAOS_LIMIT", "key")
    scope = env.get("CHAOS_SCOPE", "cluster")
    options = source_options(settings)
    if limit == "key":
        options["concurrency_key"] = lambda e: e["key"]
    else:
        options["rate_limit_per_second"] = float(env.get("CHAOS_RATE", "50"))
    options["limit_scope"] = scope
    arrivals = itertools.count()

    class LimitedSaga(Saga):
        saga_name = SAGA_NAME

        @trigger(source=settings.source, **options)
        def on_event(self, event: Any, meta: EventMeta) -> dict[str, Any]:
            return {
                "n": event["n"],
                "key": event["key"],
                "arrival": next(arrivals),
                "arrived_at": worker,
                "attempt": meta.attempt,
            }

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            run = await runs.started(ctx, worker)
            if settings.step_delay:
                await asyncio.sleep(settings.step_delay)
            await runs.ended(run)

    return LimitedSaga


async def main() -> None:
    settings = Settings.from_env()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # every connection opened before the first run: one opened mid-run would record its run's
    # start late (tests/chaos/test_cluster_limits.py reads the starts' spacing)
    pool = await asyncpg.create_pool(settings.side_dsn, min_size=4, max_size=4)
    store: SagaStore = store_from_url(settings.store_url)
    try:
        async with store:
            config = trigger_config(settings)
            worker = config.worker_id or "?"
            define_saga(settings, RunTable(pool, settings.side_table), worker)
            await sagaz.start_triggers(config, store)
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
