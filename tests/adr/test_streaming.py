"""ADR-025 §3 "Unified `@action` for Streaming": an ``@action`` that ``yield``s streams.

The block, as written, is a step of a triggered saga (started by ``sagaz.fire_event`` through
the memory source). What the ADR leaves undefined: ``transform``, and where the ``"input"``
stream comes from (a streaming action named ``"input"`` before it) and who reads
``process_stream`` (a step after it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, action, trigger


def transform(record: dict[str, Any]) -> dict[str, Any]:
    """Left undefined by the ADR: one record in, one record out."""
    return {"id": record["id"], "score": record["value"] * 10}


async def test_records_flow_through_process_stream_in_order_and_bounded() -> None:
    produced = 0
    loaded: list[dict[str, Any]] = []
    most_unread = 0

    class ScoringSaga(Saga):
        saga_name = "scoring"

        @trigger(source="memory", channel="batches")
        def on_batch(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"records": event["records"]}

        @action("input")
        async def extract(self, ctx: SagaContext) -> AsyncIterator[dict[str, Any]]:
            nonlocal produced
            for i in range(ctx["records"]):
                produced += 1
                yield {"id": i, "value": i}

        # -- ADR-025 §3, as written --------------------------------------------------------
        # fmt: off
        @action("process_stream")
        async def process(self, ctx):
            async for record in ctx.stream("input"):
                yield transform(record)
        # fmt: on
        # ------------------------------------------------------------------------------------

        @action("load")
        async def load(self, ctx: SagaContext) -> dict[str, Any]:
            nonlocal most_unread
            async for record in ctx.stream("process_stream"):
                loaded.append(record)
                most_unread = max(most_unread, produced - len(loaded))
            return {"loaded": len(loaded)}

    engine = await sagaz.start_triggers()
    [saga_id] = await sagaz.fire_event("batches", {"records": 5_000})
    result = await engine.wait_for(saga_id, timeout=30)

    assert result
    assert result.status is SagaStatus.COMPLETED, result.error
    assert result.context == {"records": 5_000, "loaded": 5_000}
    assert loaded == [{"id": i, "score": i * 10} for i in range(5_000)]
    # records flow as they are made: never the whole batch in memory (two bounded channels)
    assert most_unread <= 250
