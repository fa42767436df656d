"""What a source gets from the engine comes through its ``SourceContext``; the engine builds
each source by its kind and never reaches into one."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx

from sagaz import Fire, Saga, Trigger, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.sources import webhook
from sagaz.sources.poll import PollSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from sagaz.triggers.options import WebhookOptions
from tests.recording_emit import RecordingEmit, source_context


async def test_the_webhook_serves_the_metrics_renderer_of_its_context_while_it_runs() -> None:
    scrapes: list[int] = []

    def render() -> tuple[bytes, str]:
        scrapes.append(1)
        return b"sagaz_from_context 1.0\n", "text/plain; version=0.0.4"

    shared: dict[str, Any] = {}
    app = webhook.webhook_app(shared)  # mounted: no port of its own
    ctx = dataclasses.replace(source_context(), shared=shared, metrics_renderer=render)
    source = webhook.create(WebhookOptions(path="/orders"), ctx)
    task = asyncio.create_task(source.run(RecordingEmit(auto_ack=True)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        try:
            await eventually(lambda: app.ready, what="the webhook route to be active")
            scraped = await client.get("/metrics")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await source.stop()
        after = await client.get("/metrics")

    assert scraped.status_code == 200
    assert scraped.text == "sagaz_from_context 1.0\n"
    assert scrapes == [1]
    assert after.status_code == 404  # the source let go of the server: no engine to report


async def test_the_webhook_without_a_metrics_renderer_answers_404_with_the_hint() -> None:
    shared: dict[str, Any] = {}
    app = webhook.webhook_app(shared)
    source = webhook.create(
        WebhookOptions(path="/orders"), dataclasses.replace(source_context(), shared=shared)
    )
    task = asyncio.create_task(source.run(RecordingEmit(auto_ack=True)))
    transport = httpx.ASGITransport(app=app)
    try:
        await eventually(lambda: app.ready, what="the webhook route to be active")
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/metrics")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.stop()
    assert response.status_code == 404
    assert "sagaz[metrics]" in response.json()["error"]


class Every(Trigger):
    name = "every-tick"
    poll_interval = 0.01

    def __init__(self) -> None:
        self.polls = 0

    async def poll(self) -> Fire:
        self.polls += 1
        return Fire({"n": self.polls})


async def test_the_engine_builds_a_poll_source_by_its_kind_at_start() -> None:
    poller = Every()

    class Polled(Saga):
        @trigger(source="custom", trigger=poller)
        def on_tick(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("noop")
        async def noop(self, ctx: Any) -> None:
            return None

    config = TriggerConfig(trigger_base_poll_interval=0.01)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        [source] = engine.sources.values()
        assert isinstance(source, PollSource)
        assert source.poll_trigger is poller
        await eventually(lambda: sum(engine.metrics.completed.values()) >= 1)
