"""Webhook triggers end to end: real HTTP (uvicorn on a free port) → engine → saga → store.

``tests/integration/test_webhook_source.py`` checks the HTTP layer against a fake ``emit``;
here every request walks the whole pipeline and the tests look at what a user would see: the
HTTP answer and the sagas (or dead letters) in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.routing import Mount

import sagaz
from sagaz import (
    Saga,
    SagaContext,
    SagaStatus,
    TriggerConfig,
    WebhookRequest,
    action,
    compensate,
    trigger,
)
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.sources.webhook.auth import sign_body
from sagaz.sources.webhook.source import webhook_server
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from sagaz.testing.tansu import free_port
from tests.engine_support import OutageStore
from tests.services import unique_name

TOKEN = "t0ken-from-config"
OPTION_SECRET = "secret-from-the-option"
CONFIG_SECRET = "secret-from-the-config"


class Order(BaseModel):
    """The body of ``POST /orders``."""

    order_id: str
    amount: float = Field(gt=0)
    test: bool = False  # test orders are filtered: no saga


@dataclass
class Shop:
    """What the saga of one test did."""

    name: str
    runs: list[str]  # saga ids, once per run of the first step
    gate: asyncio.Event  # the first step waits for it

    def trigger_id(self, method: str) -> str:
        return f"{self.name}.{method}"


def define_shop(*, gated: bool = False) -> Shop:
    """An order saga with one webhook trigger per scenario, unique per test."""
    shop = Shop(unique_name("shop"), [], asyncio.Event())
    if not gated:
        shop.gate.set()

    class ShopSaga(Saga):
        saga_name = shop.name

        @trigger(source="webhook", path="/orders")
        def on_order(self, order: Order) -> dict[str, Any] | None:
            if order.test:
                return None
            return {"order_id": order.order_id, "amount": order.amount}

        @trigger(source="webhook", path="/bearer", auth="bearer")  # tokens from the config
        def on_bearer(self, request: WebhookRequest) -> dict[str, Any]:
            return {"order_id": request.json()["order_id"], "amount": 1.0}

        @trigger(source="webhook", path="/hmac", auth="hmac", secret=OPTION_SECRET)
        def on_hmac(self, request: WebhookRequest) -> dict[str, Any]:
            return {"order_id": request.json()["order_id"], "amount": 1.0}

        @trigger(  # secret from the config
            source="webhook", path="/hmac-config", auth="hmac", signature_header="X-Signature"
        )
        def on_hmac_config(self, request: WebhookRequest) -> dict[str, Any]:
            return {"order_id": request.json()["order_id"], "amount": 1.0}

        @trigger(source="webhook", path="/load")
        def on_load(self, request: WebhookRequest) -> dict[str, Any]:
            return {"order_id": str(request.json()["n"]), "amount": 1.0}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
            shop.runs.append(ctx.saga_id)
            await shop.gate.wait()
            return {"reserved": True}

        @compensate("reserve")
        async def release(self, ctx: SagaContext) -> None:
            return None

        @action("charge")
        async def charge(self, ctx: SagaContext) -> dict[str, Any]:
            return {"charged": ctx["amount"]}

    return shop


@dataclass
class Running:
    engine: TriggerEngine
    store: SagaStore
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[Running]:
    """Run a :class:`TriggerEngine` whose webhook server listens on a free port."""
    settings = {
        "webhook_port": 0,
        "webhook_tokens": [TOKEN],
        "webhook_hmac_secret": CONFIG_SECRET,
        "shutdown_timeout": 5,
        **config,
    }
    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(**settings), store) as engine:
        server = webhook_server(engine.shared)
        await eventually(lambda: server.app.ready, what="the webhook routes to be active")
        assert server.url is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            yield Running(engine, store, client)


async def saga_status(store: SagaStore, saga_id: str) -> SagaStatus | None:
    record = await store.get_saga(saga_id)
    return None if record is None else record.status


async def completed(store: SagaStore, saga_id: str) -> None:
    async def done() -> bool:
        return await saga_status(store, saga_id) is SagaStatus.COMPLETED

    await eventually(done, within=10, what=f"saga {saga_id} to complete")


async def settled(running: Running, saga_id: str) -> None:
    """Completed in the store and settled by the engine (inbox completed, delivery acked): only
    then is the same key a duplicate rather than a repeat joining the run in flight."""
    await completed(running.store, saga_id)
    async with asyncio.timeout(10):
        await running.engine.dispatcher.wait_idle()


async def sagas_of(store: SagaStore, shop: Shop) -> list[Any]:
    return await store.list_sagas(saga_name=shop.name, limit=10_000)


# -- accepted, filtered, duplicate ---------------------------------------------------------


async def test_accepted_order_answers_202_and_its_saga_completes() -> None:
    shop = define_shop()
    async with serving() as running:
        response = await running.client.post("/orders", json={"order_id": "A-1", "amount": 9.5})
        assert response.status_code == 202
        body = response.json()
        assert set(body) == {"saga_id", "status"}
        assert body["status"] == "accepted"
        await completed(running.store, body["saga_id"])
        record = await running.store.get_saga(body["saga_id"])

    assert record is not None
    assert record.trigger_id == shop.trigger_id("on_order")
    assert record.context["order_id"] == "A-1"
    assert record.context["reserved"] is True
    assert record.context["charged"] == 9.5
    assert shop.runs == [body["saga_id"]]


async def test_filtered_event_answers_200_and_starts_nothing() -> None:
    shop = define_shop()
    async with serving() as running:
        response = await running.client.post(
            "/orders", json={"order_id": "T-1", "amount": 1, "test": True}
        )
        assert (response.status_code, response.json()) == (200, {"status": "filtered"})
        assert running.engine.metrics.reasons["filtered"] == 1
        assert await sagas_of(running.store, shop) == []
    assert shop.runs == []


async def test_repeated_idempotency_key_answers_200_with_the_same_saga() -> None:
    shop = define_shop()
    headers = {"Idempotency-Key": "order-A-2"}
    async with serving() as running:
        first = await running.client.post(
            "/orders", json={"order_id": "A-2", "amount": 3}, headers=headers
        )
        assert first.status_code == 202
        saga_id = first.json()["saga_id"]
        await settled(running, saga_id)
        # a client retry; the key, not the body, identifies the event
        again = await running.client.post(
            "/orders", json={"order_id": "A-2", "amount": 3}, headers=headers
        )
        changed = await running.client.post(
            "/orders", json={"order_id": "A-2", "amount": 4}, headers=headers
        )
        sagas = await sagas_of(running.store, shop)

    assert (again.status_code, again.json()) == (200, {"saga_id": saga_id, "status": "duplicate"})
    assert (changed.status_code, changed.json()["saga_id"]) == (200, saga_id)
    assert [s.saga_id for s in sagas] == [saga_id]
    assert shop.runs == [saga_id]


async def test_repeated_idempotency_key_while_the_saga_runs_does_not_run_it_again() -> None:
    # the repeat must not be taken over by the worker that holds the key and run a second time
    shop = define_shop(gated=True)
    headers = {"Idempotency-Key": "order-A-3"}
    order = {"order_id": "A-3", "amount": 3}
    async with serving() as running:
        first = await running.client.post("/orders", json=order, headers=headers)
        saga_id = first.json()["saga_id"]
        await eventually(lambda: shop.runs == [saga_id], what="the saga to be running")
        during = await running.client.post("/orders", json=order, headers=headers)
        shop.gate.set()
        await settled(running, saga_id)
        after = await running.client.post("/orders", json=order, headers=headers)
        sagas = await sagas_of(running.store, shop)

    assert first.status_code == 202
    # answered like the first request (same saga), settled together with its run
    assert (during.status_code, during.json()["saga_id"]) == (202, saga_id)
    assert (after.status_code, after.json()["status"]) == (200, "duplicate")
    assert shop.runs == [saga_id]
    assert [s.saga_id for s in sagas] == [saga_id]


async def test_identical_bodies_without_idempotency_key_are_two_events() -> None:
    # two customers may well send the same body; only a key (or dedup="content") merges them
    name = unique_name("tips")
    runs: list[str] = []

    class TipSaga(Saga):
        saga_name = name

        @trigger(source="webhook", path="/tips")
        def on_tip(self, request: WebhookRequest) -> dict[str, Any]:
            return dict(request.json())

        @trigger(source="webhook", path="/tips/{user}", dedup="content")
        def on_user_tip(self, request: WebhookRequest) -> dict[str, Any]:
            return {"user": request.path_params["user"], **request.json()}

        @action("record")
        async def record(self, ctx: SagaContext) -> None:
            runs.append(ctx.saga_id)

    tip = {"amount": 2}
    async with serving() as running:
        first = await running.client.post("/tips", json=tip)
        second = await running.client.post("/tips", json=tip)
        for response in (first, second):
            assert response.status_code == 202
            await settled(running, response.json()["saga_id"])
        alice = await running.client.post("/tips/alice", json=tip)
        await settled(running, alice.json()["saga_id"])
        alice_again = await running.client.post("/tips/alice", json=tip)
        bob = await running.client.post("/tips/bob", json=tip)  # same body, another path
        await settled(running, bob.json()["saga_id"])
        sagas = await running.store.list_sagas(saga_name=name, limit=100)

    assert first.json()["saga_id"] != second.json()["saga_id"]
    assert (alice_again.status_code, alice_again.json()) == (
        200,
        {"saga_id": alice.json()["saga_id"], "status": "duplicate"},
    )
    assert bob.status_code == 202
    assert bob.json()["saga_id"] != alice.json()["saga_id"]
    assert len(sagas) == len(runs) == 4


# -- refused requests ----------------------------------------------------------------------


async def test_malformed_json_and_validation_errors_answer_400_and_are_not_stored() -> None:
    # anyone who reaches the port can send them: counted, never stored (unless the trigger
    # sets dead_letter_invalid=True, see test_webhook_limits.py)
    shop = define_shop()
    async with serving() as running:
        malformed = await running.client.post(
            "/orders", content=b'{"order_id": ', headers={"content-type": "application/json"}
        )
        invalid = await running.client.post("/orders", json={"order_id": "A-4", "amount": -1})
        missing = await running.client.post("/orders", json={"amount": 2})
        dead = await running.store.list_dead_letters(trigger_id=shop.trigger_id("on_order"))
        assert await sagas_of(running.store, shop) == []
        rejections = webhook_server(running.engine.shared).app.rejections.counts
        not_started = running.engine.metrics.reasons["invalid"]

    assert malformed.status_code == 400
    assert malformed.json()["details"][0]["type"] == "json_invalid"
    assert invalid.status_code == 400
    [error] = invalid.json()["details"]
    assert (error["loc"], error["type"]) == (["amount"], "greater_than")
    assert "greater than 0" in error["msg"]
    assert missing.status_code == 400
    assert [(e["loc"], e["type"]) for e in missing.json()["details"]] == [(["order_id"], "missing")]
    assert dead == []
    assert rejections[("invalid_body", shop.trigger_id("on_order"))] == 3
    assert not_started == 3  # still one reason code per event that did not become a saga
    assert shop.runs == []


async def test_bearer_and_hmac_refuse_401_403_and_start_nothing() -> None:
    shop = define_shop()
    body = json.dumps({"order_id": "S-1"}).encode()
    async with serving() as running:
        client = running.client
        answers = {
            "bearer missing": await client.post("/bearer", content=body),
            "bearer wrong": await client.post(
                "/bearer", content=body, headers={"Authorization": "Bearer nope"}
            ),
            "hmac missing": await client.post("/hmac", content=body),
            "hmac wrong": await client.post(
                "/hmac", content=body, headers={"X-Hub-Signature-256": sign_body("nope", body)}
            ),
            "hmac config secret on the option route": await client.post(
                "/hmac",
                content=body,
                headers={"X-Hub-Signature-256": sign_body(CONFIG_SECRET, body)},
            ),
            "hmac-config missing": await client.post("/hmac-config", content=body),
            "hmac-config wrong": await client.post(
                "/hmac-config",
                content=body,
                headers={"X-Signature": sign_body(OPTION_SECRET, body)},
            ),
        }
        for method in ("on_bearer", "on_hmac", "on_hmac_config"):
            assert running.engine.metrics.received[shop.trigger_id(method)] == 0
        assert await sagas_of(running.store, shop) == []
        assert await running.store.list_dead_letters() == []

        good = [
            await client.post(
                "/bearer", content=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ),
            await client.post(
                "/hmac",
                content=body,
                headers={"X-Hub-Signature-256": sign_body(OPTION_SECRET, body)},
            ),
            await client.post(
                "/hmac-config",
                content=body,
                headers={"X-Signature": sign_body(CONFIG_SECRET, body)},
            ),
        ]
        for response in good:
            assert response.status_code == 202, response.text
            await completed(running.store, response.json()["saga_id"])

    assert {name: r.status_code for name, r in answers.items()} == {
        "bearer missing": 401,
        "bearer wrong": 403,
        "hmac missing": 401,
        "hmac wrong": 403,
        "hmac config secret on the option route": 403,
        "hmac-config missing": 401,
        "hmac-config wrong": 403,
    }
    assert len(shop.runs) == 3


async def test_unknown_path_404_wrong_method_405_and_10_mib_body_413() -> None:
    shop = define_shop()
    ten_mib = b"x" * (10 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(ten_mib), 1 << 20):
            yield ten_mib[start : start + (1 << 20)]

    async with serving() as running:
        unknown = await running.client.post("/nowhere", json={})
        wrong_method = await running.client.get("/orders")
        declared = await running.client.post("/orders", content=ten_mib)  # Content-Length
        streamed = await running.client.post("/orders", content=chunks())  # chunked
        assert running.engine.metrics.received[shop.trigger_id("on_order")] == 0
        assert await sagas_of(running.store, shop) == []

    assert unknown.status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert shop.runs == []


# -- load ------------------------------------------------------------------------------------


async def test_500_concurrent_requests_on_a_tiny_queue_get_202_or_503_and_202_means_one_saga() -> (
    None
):
    shop = define_shop(gated=True)  # sagas stay running until every request was answered
    queue_size, workers, total = 8, 4, 500
    config = {
        "queue_size": queue_size,
        "backpressure_strategy": "reject",
        "max_concurrent_sagas": workers,
    }
    async with serving(**config) as running:
        # 20 clients x 25 connections: all 500 requests in flight at once
        clients = [
            httpx.AsyncClient(
                base_url=running.client.base_url,
                limits=httpx.Limits(max_connections=25),
                timeout=30,
            )
            for _ in range(20)
        ]
        try:
            responses = await asyncio.gather(
                *(
                    client.post("/load", json={"n": c * 25 + i})
                    for c, client in enumerate(clients)
                    for i in range(25)
                )
            )
        finally:
            for client in clients:
                await client.aclose()
        shop.gate.set()
        statuses = Counter(r.status_code for r in responses)
        accepted = {r.json()["saga_id"] for r in responses if r.status_code == 202}
        await eventually(
            lambda: len(shop.runs) == len(accepted) and running.engine.dispatcher.in_flight == 0,
            within=15,
            what=f"{len(accepted)} sagas to run",
        )
        for saga_id in accepted:
            await completed(running.store, saga_id)
        sagas = await sagas_of(running.store, shop)
        dead = await running.store.list_dead_letters(limit=total)

    assert set(statuses) <= {202, 503}, statuses
    assert statuses[202] + statuses[503] == total
    # the queue holds queue_size; at most `workers` more had been taken out to run
    assert queue_size <= statuses[202] <= queue_size + workers, statuses
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 503)
    # every 202 is exactly one completed saga, run once
    assert len(accepted) == statuses[202]
    assert sorted(s.saga_id for s in sagas) == sorted(accepted)
    assert all(s.status is SagaStatus.COMPLETED for s in sagas)
    assert Counter(shop.runs) == Counter(dict.fromkeys(accepted, 1))
    # every 503 is one dead letter "rejected", and no saga
    refused = {n for n, r in enumerate(responses) if r.status_code == 503}
    assert len(dead) == len(refused)
    assert {d.reason for d in dead} == {"rejected"}
    assert {json.loads(d.payload["body"])["n"] for d in dead} == refused
    assert not {d.saga_id for d in dead} & accepted
    assert [await running.store.get_saga(d.saga_id or "") for d in dead] == [None] * len(dead)


# -- mounted in the host application --------------------------------------------------------


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_webhook_app_mounted_under_a_prefix_starts_sagas_without_its_own_port() -> None:
    shop = define_shop()
    port = free_port()
    parent = Starlette(routes=[Mount("/hooks", app=sagaz.webhook_app())])
    store = MemorySagaStore()
    config = TriggerConfig(
        webhook_port=port, webhook_tokens=[TOKEN], webhook_hmac_secret=CONFIG_SECRET
    )
    engine = await sagaz.start_triggers(config, store)
    try:
        server = webhook_server(engine.shared)
        await eventually(lambda: server.app.ready, what="the webhook routes to be active")
        assert server.port is None
        assert not listening(port)  # the configured port stays closed
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            health = await client.get("/hooks/healthz")
            response = await client.post("/hooks/orders", json={"order_id": "M-1", "amount": 2})
            outside = await client.post("/orders", json={"order_id": "M-2", "amount": 2})
        assert response.status_code == 202, response.text
        await completed(store, response.json()["saga_id"])
    finally:
        await sagaz.stop_triggers()

    assert health.status_code == 200
    assert outside.status_code == 404  # the parent's own 404: only the mount reaches sagaz
    record = await store.get_saga(response.json()["saga_id"])
    assert record is not None
    assert record.context["order_id"] == "M-1"
    assert shop.runs == [record.saga_id]


async def test_metrics_are_served_next_to_the_webhooks_while_the_engine_runs() -> None:
    define_shop()
    app = sagaz.webhook_app()
    transport = httpx.ASGITransport(app=app)
    store = MemorySagaStore()
    config = TriggerConfig(webhook_tokens=[TOKEN], webhook_hmac_secret=CONFIG_SECRET)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        before = await client.get("/metrics")
        engine = await sagaz.start_triggers(config, store)
        try:
            await eventually(lambda: app.ready, what="the webhook routes to be active")
            response = await client.post("/orders", json={"order_id": "P-1", "amount": 3})
            await completed(store, response.json()["saga_id"])
            scraped = await client.get("/metrics")
            posted = await client.post("/metrics")
        finally:
            await sagaz.stop_triggers()
        after = await client.get("/metrics")
    assert before.status_code == 404 and "sagaz[metrics]" in before.json()["error"]
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    trigger_id = next(iter(engine.triggers))
    assert f'sagaz_sagas_completed_total{{trigger="{trigger_id}"}} 1.0' in scraped.text
    assert posted.status_code == 405
    assert after.status_code == 404  # the engine stopped: nothing to report


@pytest.fixture(autouse=True)
async def _no_engine_left_running() -> AsyncIterator[None]:
    yield
    await sagaz.stop_triggers()  # a failed test must not leave the process-wide engine behind


# -- paused --------------------------------------------------------------------------------


async def test_a_paused_webhook_trigger_answers_503_with_retry_after_until_resumed() -> None:
    shop = define_shop()
    async with serving(trigger_state_interval_seconds=0.05) as running:
        on_order = shop.trigger_id("on_order")
        # as `sagaz triggers pause`: through the store, followed within the watch interval
        await sagaz.pause_trigger(on_order, store=running.store)
        await eventually(lambda: running.engine.paused_triggers(), what="the pause")
        order = {"order_id": "P-1", "amount": 3.0}
        refused = await running.client.post("/orders", json=order)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "paused" in refused.json()["error"]
        other = await running.client.post("/load", json={"n": 1})  # other triggers still run
        assert other.status_code == 202
        ready = await running.client.get("/readyz")
        assert ready.status_code == 200  # a paused trigger does not take the server out
        rejections = webhook_server(running.engine.shared).app.rejections
        assert rejections.counts[("paused", on_order)] == 1

        await sagaz.resume_trigger(on_order, store=running.store)
        await eventually(lambda: not running.engine.paused_triggers(), what="the resume")
        accepted = await running.client.post("/orders", json=order)
        assert accepted.status_code == 202
        await completed(running.store, accepted.json()["saga_id"])
    assert len(await sagas_of(running.store, shop)) == 2  # the accepted order and /load


# -- the store unavailable -----------------------------------------------------------------


async def test_while_the_store_is_down_requests_and_readyz_get_503_with_retry_after() -> None:
    """Requests are refused at once, and ``/readyz`` says why, so that a load balancer
    sends them to an instance whose store answers."""
    ran: list[int] = []

    class Outaged(Saga):
        saga_name = unique_name("outaged")

        @trigger(source="webhook", path="/outaged")
        def on_request(self, request: WebhookRequest) -> dict[str, Any]:
            return {"n": request.json()["n"]}

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    store = OutageStore()
    config = TriggerConfig(webhook_port=0, shutdown_timeout=5)
    async with TriggerEngine(config, store) as engine:
        server = webhook_server(engine.shared)
        await eventually(lambda: server.app.ready, what="the webhook routes to be active")
        assert server.url is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            assert (await client.get("/readyz")).status_code == 200
            store.down = True
            for n in (1, 2):  # the first finds the outage, the second knows of it
                response = await client.post("/outaged", json={"n": n})
                assert response.status_code == 503
                assert response.headers["retry-after"] == "1"
                assert response.json() == {"error": "retry later"}
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.headers["retry-after"] == "1"
            assert not_ready.json() == {"status": "not ready", "store": "unavailable"}
            assert (await client.get("/healthz")).status_code == 200  # alive all the same
            store.down = False
            await eventually(lambda: engine.state.outage.available, what="the store back")
            assert (await client.get("/readyz")).status_code == 200
            response = await client.post("/outaged", json={"n": 3})
            assert response.status_code == 202
            await eventually(lambda: ran == [3], what="the accepted request's saga")
