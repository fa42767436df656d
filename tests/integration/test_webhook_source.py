"""The webhook source over real HTTP (uvicorn on a free port), driven by a fake ``emit``.

No engine is involved: the fake ``emit`` returns each :class:`AdmissionResult` kind and the
tests assert what an HTTP client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import socket
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydantic
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from sagaz.abc import SourceContext
from sagaz.clock import SystemClock
from sagaz.config import TriggerConfig
from sagaz.events import (
    AdmissionOutcome,
    AdmissionResult,
    Delivery,
    Reason,
    WebhookRequest,
)
from sagaz.exceptions import ConfigurationError
from sagaz.sources.webhook import bodies as webhook_bodies
from sagaz.sources.webhook import source as webhook
from sagaz.sources.webhook.auth import sign_body
from sagaz.sources.webhook.server import WebhookServer, WebhookServerError
from sagaz.testing import eventually
from sagaz.triggers.options import WebhookOptions

try:
    from sagaz.storage import MemorySagaStore
except ImportError:  # a sibling storage module may be missing while it is being written
    from sagaz.storage.memory import MemorySagaStore

Respond = Callable[[Delivery], AdmissionResult | Awaitable[AdmissionResult]]


def _key(delivery: Delivery) -> str:
    """What the pipeline would key this delivery on, for a trigger with ``dedup="content"``."""
    return delivery.identity or delivery.content_identity or ""


def _accept(delivery: Delivery) -> AdmissionResult:
    return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id=f"saga-{_key(delivery)[-8:]}")


@dataclass
class FakeEmit:
    """An ``emit`` that records deliveries and answers with ``respond(delivery)``."""

    respond: Respond = _accept
    deliveries: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> AdmissionResult:
        self.deliveries.append(delivery)
        result = self.respond(delivery)
        if not isinstance(result, AdmissionResult):
            result = await result
        return result


@dataclass
class Running:
    client: httpx.AsyncClient
    server: WebhookServer
    sources: list[webhook.WebhookSource]
    errors: list[BaseException]


def make_ctx(
    shared: dict[str, Any],
    trigger_id: str,
    errors: list[BaseException],
    config: TriggerConfig | None = None,
) -> SourceContext:
    async def report_error(exc: BaseException) -> None:
        errors.append(exc)

    return SourceContext(
        trigger_id=trigger_id,
        saga_name=trigger_id.split(".")[0],
        config=config or TriggerConfig(webhook_port=0, shutdown_timeout=5),
        store=MemorySagaStore(),
        clock=SystemClock(),
        worker_id="worker-1",
        report_error=report_error,
        shared=shared,
    )


def create_source(options: dict[str, Any], ctx: SourceContext) -> webhook.WebhookSource:
    """Build a webhook source as the engine does: from the validated ``@trigger`` options."""
    return webhook.create(WebhookOptions.model_validate(options), ctx)


def unique_trigger(name: str = "hook") -> str:
    return f"webhook-test-{uuid.uuid4().hex[:8]}.{name}"


async def stop_all(sources: list[webhook.WebhookSource], tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:  # a run() that failed by itself must fail the test
        assert result is None or isinstance(result, asyncio.CancelledError), result
    for source in sources:
        await source.stop()


@asynccontextmanager
async def serving(
    *routes: dict[str, Any],
    emit: FakeEmit,
    config: TriggerConfig | None = None,
) -> AsyncIterator[Running]:
    """Run one webhook source per ``routes`` entry on a free port; yield a client for it."""
    shared: dict[str, Any] = {}
    errors: list[BaseException] = []
    sources = [
        create_source(options, make_ctx(shared, unique_trigger(f"r{i}"), errors, config))
        for i, options in enumerate(routes)
    ]
    tasks = [asyncio.create_task(source.run(emit)) for source in sources]
    server = webhook.webhook_server(shared)
    try:
        await eventually(lambda: server.app.ready)
        assert server.url is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield Running(client, server, sources, errors)
    finally:
        await stop_all(sources, tasks)


def body_identity(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        digest.update(part + b"\n")
    digest.update(body)
    return "sha256:" + digest.hexdigest()


# -- accepted requests ----------------------------------------------------------------------


async def test_webhook_accepted_request_reaches_emit_as_webhook_request() -> None:
    emit = FakeEmit()
    async with serving({"path": "/orders/{order_id}"}, emit=emit) as running:
        body = json.dumps({"amount": 10}).encode()
        response = await running.client.post(
            "/orders/42?source=shop",
            content=body,
            headers={"Content-Type": "application/json", "X-Tenant": "acme"},
        )

        assert response.status_code == 202
        delivery = emit.deliveries[0]
        assert response.json() == {
            "saga_id": f"saga-{_key(delivery)[-8:]}",
            "status": "accepted",
        }
        request = delivery.payload
        assert isinstance(request, WebhookRequest)
        assert delivery.decoded is True
        assert (request.method, request.path) == ("POST", "/orders/42")
        assert request.path_params == {"order_id": "42"}
        assert request.query_params == {"source": "shop"}
        assert request.headers["x-tenant"] == "acme"
        assert request.body == body
        assert request.json() == {"amount": 10}
        meta = delivery.meta
        assert meta.source == "webhook"
        assert meta.trigger == running.sources[0].route.trigger_id
        assert meta.topic == "/orders/{order_id}"
        assert meta.headers["x-tenant"] == "acme"
        assert meta.message_id
        # no Idempotency-Key: no identity (each request is its own event), and the content
        # key a trigger with dedup="content" uses instead
        assert delivery.identity == ""
        assert delivery.content_identity == body_identity("POST", "/orders/42", "source=shop", body)

        # the same request again has the same content key; another body not
        await running.client.post("/orders/42?source=shop", content=body)
        await running.client.post("/orders/42?source=shop", content=b'{"amount": 11}')
        contents = [d.content_identity for d in emit.deliveries]
        assert contents[0] == contents[1] != contents[2]
        assert [d.identity for d in emit.deliveries] == ["", "", ""]


async def test_webhook_repeated_idempotency_key_answers_duplicate() -> None:
    completed: dict[str, str] = {}

    def respond(delivery: Delivery) -> AdmissionResult:
        if delivery.identity in completed:
            return AdmissionResult(
                AdmissionOutcome.DUPLICATE,
                saga_id=completed[delivery.identity],
                reason=Reason.DUPLICATE,
            )
        completed[delivery.identity] = f"saga-{len(completed) + 1}"
        return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id=completed[delivery.identity])

    emit = FakeEmit(respond)
    async with serving({"path": "/payments"}, emit=emit) as running:
        headers = {"Idempotency-Key": "pay-123"}
        first = await running.client.post("/payments", content=b"{}", headers=headers)
        # a different body with the same key is still the same event
        second = await running.client.post("/payments", content=b'{"x":1}', headers=headers)
        too_long = await running.client.post(
            "/payments", content=b"{}", headers={"Idempotency-Key": "k" * 300}
        )

    assert (first.status_code, first.json()) == (202, {"saga_id": "saga-1", "status": "accepted"})
    assert (second.status_code, second.json()) == (
        200,
        {"saga_id": "saga-1", "status": "duplicate"},
    )
    assert [d.identity for d in emit.deliveries] == ["pay-123", "pay-123"]
    assert [d.content_identity for d in emit.deliveries] == [None, None]  # the key says it all
    assert [d.meta.message_id for d in emit.deliveries] == ["pay-123", "pay-123"]
    assert too_long.status_code == 400
    assert "Idempotency-Key" in too_long.json()["error"]


# -- every admission outcome ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "status", "body"),
    [
        (
            AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id="s-1"),
            202,
            {"saga_id": "s-1", "status": "accepted"},
        ),
        (
            AdmissionResult(AdmissionOutcome.BUSY, saga_id="s-2"),
            202,
            {"saga_id": "s-2", "status": "in_progress"},
        ),
        (
            AdmissionResult(AdmissionOutcome.DUPLICATE, saga_id="s-3", reason=Reason.DUPLICATE),
            200,
            {"saga_id": "s-3", "status": "duplicate"},
        ),
        (
            AdmissionResult(AdmissionOutcome.FILTERED, reason=Reason.FILTERED),
            200,
            {"status": "filtered"},
        ),
        (
            AdmissionResult(
                AdmissionOutcome.INVALID,
                reason=Reason.INVALID,
                error="Expecting value: line 1 column 1 (char 0)",
            ),
            400,
            {"error": "Expecting value: line 1 column 1 (char 0)", "details": None},
        ),
    ],
    ids=["accepted", "busy", "duplicate", "filtered", "invalid-json"],
)
async def test_webhook_admission_outcome_maps_to_status(
    result: AdmissionResult, status: int, body: dict[str, Any]
) -> None:
    emit = FakeEmit(lambda _: result)
    async with serving({"path": "/events"}, emit=emit) as running:
        response = await running.client.post("/events", content=b"not json")

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body
    assert len(emit.deliveries) == 1


async def test_webhook_validation_error_returns_400_with_pydantic_details() -> None:
    class Order(pydantic.BaseModel):
        order_id: int

        @pydantic.field_validator("order_id")
        @classmethod
        def positive(cls, value: int) -> int:
            if value <= 0:
                raise ValueError("order_id must be positive")
            return value

    def respond(delivery: Delivery) -> AdmissionResult:
        try:
            Order.model_validate(delivery.payload.json())
        except pydantic.ValidationError as exc:
            # errors() holds the ValueError itself in "ctx": the app must still render JSON
            return AdmissionResult(
                AdmissionOutcome.INVALID,
                reason=Reason.INVALID,
                error=str(exc),
                details=exc.errors(),
            )
        return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id="ok")

    async with serving({"path": "/orders"}, emit=FakeEmit(respond)) as running:
        wrong_type = await running.client.post("/orders", json={"order_id": "abc"})
        negative = await running.client.post("/orders", json={"order_id": -1})
        good = await running.client.post("/orders", json={"order_id": 5})

    assert wrong_type.status_code == 400
    details = wrong_type.json()["details"]
    assert details[0]["loc"] == ["order_id"]
    assert details[0]["type"] == "int_parsing"
    assert negative.status_code == 400
    assert "order_id must be positive" in negative.json()["details"][0]["msg"]
    assert good.status_code == 202


@pytest.mark.parametrize("outcome", [AdmissionOutcome.REJECTED, AdmissionOutcome.DROPPED])
async def test_webhook_full_queue_answers_503_with_retry_after(outcome: AdmissionOutcome) -> None:
    emit = FakeEmit(lambda _: AdmissionResult(outcome, reason=Reason.REJECTED))
    async with serving({"path": "/jobs", "retry_after": 7}, emit=emit) as running:
        response = await running.client.post("/jobs", content=b"{}")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert "retry" in response.json()["error"]


async def test_webhook_emit_that_raises_gives_500_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def respond(delivery: Delivery) -> AdmissionResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("db password is hunter2")
        return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id="s-after")

    caplog.set_level(logging.ERROR, logger="sagaz.sources.webhook.app")
    async with serving({"path": "/boom"}, emit=FakeEmit(respond)) as running:
        failed = await running.client.post("/boom", content=b"{}")
        after = await running.client.post("/boom", content=b"{}")
        errors = running.errors

    assert failed.status_code == 500
    assert "hunter2" not in failed.text
    assert failed.json()["error"] == "internal error"
    assert after.status_code == 202
    assert after.json()["saga_id"] == "s-after"
    assert [type(e) for e in errors] == [RuntimeError]  # reported to the listeners
    record = next(r for r in caplog.records if r.name == "sagaz.sources.webhook.app")
    assert record.exc_info is not None
    assert record.trigger.endswith(".r0")  # type: ignore[attr-defined]


# -- auth -----------------------------------------------------------------------------------


async def test_webhook_bearer_auth_401_without_token_403_with_wrong_token() -> None:
    emit = FakeEmit()
    options = {"path": "/secure", "auth": "bearer", "tokens": ["tok-1", "tok-2"]}
    async with serving(options, emit=emit) as running:
        missing = await running.client.post("/secure", content=b"{}")
        basic = await running.client.post(
            "/secure", content=b"{}", headers={"Authorization": "Basic dXNlcjpwYXNz"}
        )
        wrong = await running.client.post(
            "/secure", content=b"{}", headers={"Authorization": "Bearer tok-3"}
        )
        assert emit.deliveries == []  # a refused request starts nothing
        good = await running.client.post(
            "/secure", content=b"{}", headers={"Authorization": "Bearer tok-2"}
        )

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert basic.status_code == 401
    assert wrong.status_code == 403
    assert "www-authenticate" not in wrong.headers
    assert good.status_code == 202
    assert len(emit.deliveries) == 1
    # the credential is not handed on (it could end up stored with the event)
    assert emit.deliveries[0].payload.headers["authorization"] == "[redacted]"
    assert emit.deliveries[0].meta.headers["authorization"] == "[redacted]"


async def test_webhook_bearer_tokens_come_from_config() -> None:
    config = TriggerConfig(webhook_port=0, webhook_tokens=["from-config"])
    emit = FakeEmit()
    async with serving({"path": "/cfg", "auth": "bearer"}, emit=emit, config=config) as running:
        good = await running.client.post(
            "/cfg", content=b"{}", headers={"Authorization": "Bearer from-config"}
        )
        wrong = await running.client.post(
            "/cfg", content=b"{}", headers={"Authorization": "Bearer other"}
        )

    assert (good.status_code, wrong.status_code) == (202, 403)


async def test_webhook_hmac_auth_checks_github_style_signature() -> None:
    emit = FakeEmit()
    secret = "gh-secret"
    async with serving({"path": "/github", "auth": "hmac", "secret": secret}, emit=emit) as running:
        body = b'{"action": "opened"}'
        missing = await running.client.post("/github", content=body)
        wrong = await running.client.post(
            "/github", content=body, headers={"X-Hub-Signature-256": sign_body("other", body)}
        )
        malformed = await running.client.post(
            "/github", content=body, headers={"X-Hub-Signature-256": "md5=abc"}
        )
        tampered = await running.client.post(
            "/github",
            content=body + b" ",
            headers={"X-Hub-Signature-256": sign_body(secret, body)},
        )
        assert emit.deliveries == []
        good = await running.client.post(
            "/github", content=body, headers={"X-Hub-Signature-256": sign_body(secret, body)}
        )

    assert missing.status_code == 401
    assert [wrong.status_code, malformed.status_code, tampered.status_code] == [403, 403, 403]
    assert good.status_code == 202
    assert [d.payload.body for d in emit.deliveries] == [body]


async def test_webhook_hmac_secret_and_header_from_config_and_option() -> None:
    config = TriggerConfig(webhook_port=0, webhook_hmac_secret="cfg-secret")
    options = {"path": "/stripe", "auth": "hmac", "signature_header": "X-Signature"}
    async with serving(options, emit=FakeEmit(), config=config) as running:
        body = b"{}"
        good = await running.client.post(
            "/stripe", content=body, headers={"X-Signature": sign_body("cfg-secret", body)}
        )
        other_header = await running.client.post(
            "/stripe",
            content=body,
            headers={"X-Hub-Signature-256": sign_body("cfg-secret", body)},
        )

    assert (good.status_code, other_header.status_code) == (202, 401)


# -- routing --------------------------------------------------------------------------------


async def test_webhook_unknown_path_404_wrong_method_405_with_allow() -> None:
    emit = FakeEmit()
    async with serving(
        {"path": "/orders"},
        {"path": "/orders", "method": "put"},
        {"path": "/orders/{order_id}"},
        {"path": "/orders/new"},
        emit=emit,
    ) as running:
        unknown = await running.client.post("/nope", content=b"{}")
        too_deep = await running.client.post("/orders/1/2", content=b"{}")
        wrong_method = await running.client.get("/orders")
        put = await running.client.put("/orders", content=b"{}")
        specific = await running.client.post("/orders/new", content=b"{}")
        templated = await running.client.post("/orders/7", content=b"{}")

    assert unknown.status_code == 404
    assert too_deep.status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST, PUT"
    assert put.status_code == 202
    assert specific.status_code == 202
    assert templated.status_code == 202
    sources = running.sources
    triggers = [d.meta.trigger for d in emit.deliveries]
    assert triggers == [
        sources[1].route.trigger_id,
        sources[3].route.trigger_id,
        sources[2].route.trigger_id,
    ]
    assert emit.deliveries[1].payload.path_params == {}
    assert emit.deliveries[2].payload.path_params == {"order_id": "7"}


# -- body size ------------------------------------------------------------------------------


async def test_webhook_declared_content_length_over_limit_is_413() -> None:
    emit = FakeEmit()
    async with serving({"path": "/small", "max_body_bytes": 1024}, emit=emit) as running:
        too_big = await running.client.post("/small", content=b"x" * 1025)
        at_limit = await running.client.post("/small", content=b"x" * 1024)

    assert too_big.status_code == 413
    assert "1024" in too_big.json()["error"]
    assert at_limit.status_code == 202
    assert [len(d.payload.body) for d in emit.deliveries] == [1024]


async def test_webhook_streamed_10_mib_body_is_refused_without_buffering_it() -> None:
    emit = FakeEmit()
    total = 10 * 1024 * 1024
    chunk = b"x" * (64 * 1024)
    sent = 0

    async def ten_mib() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    async with serving({"path": "/upload"}, emit=emit) as running:  # default limit: 1 MiB
        tracemalloc.start()
        try:
            # no Content-Length: chunked transfer, so only the streaming check can catch it
            response = await running.client.post("/upload", content=ten_mib())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert "1048576" in response.json()["error"]
        assert emit.deliveries == []
        # client and server together never held anything near the 10 MiB that went through
        assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes"
        after = await running.client.post("/upload", content=b"{}")
        assert after.status_code == 202


async def test_webhook_413_arrives_before_the_upload_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # past this budget of dropped bytes the server hangs up instead of reading on
    monkeypatch.setattr(webhook_bodies, "MAX_DISCARD_BYTES", 2 * 1024 * 1024)
    emit = FakeEmit()
    total = 10 * 1024 * 1024
    chunk = b"y" * (64 * 1024)
    async with serving({"path": "/upload"}, emit=emit) as running:
        assert running.server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", running.server.port)
        try:
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            head = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
            sent = 0
            with contextlib.suppress(ConnectionError):  # the server may hang up mid-write
                while sent < total and not head.done():
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    sent += len(chunk)
            status_line = (await asyncio.wait_for(head, 5)).split(b"\r\n")[0]
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert sent < total, "the client had to send the whole body before getting an answer"
    assert emit.deliveries == []


# -- health, lifecycle, mounting ------------------------------------------------------------


async def test_webhook_healthz_readyz_follow_the_routes() -> None:
    shared: dict[str, Any] = {}
    errors: list[BaseException] = []
    running_source = create_source({"path": "/a"}, make_ctx(shared, unique_trigger("a"), errors))
    idle_source = create_source({"path": "/b"}, make_ctx(shared, unique_trigger("b"), errors))
    emit = FakeEmit()
    task = asyncio.create_task(running_source.run(emit))
    server = webhook.webhook_server(shared)
    try:
        await eventually(lambda: server.port is not None)
        async with httpx.AsyncClient(base_url=server.url or "") as client:
            await eventually(lambda: running_source.route.state == "active")
            health = await client.get("/healthz")
            not_ready = await client.get("/readyz")
            not_started = await client.post("/b", content=b"{}")
            served = await client.post("/a", content=b"{}")

            await idle_source.start()
            started = asyncio.create_task(idle_source.run(emit))
            await eventually(lambda: server.app.ready)
            ready = await client.get("/readyz")

            await idle_source.stop()  # its route answers 503 until the server goes
            stopping = await client.post("/b", content=b"{}")
            not_ready_again = await client.get("/readyz")
            await started
    finally:
        await stop_all([running_source, idle_source], [task])

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert not_ready.status_code == 503
    assert not_ready.json()["waiting"] == [idle_source.route.trigger_id]
    assert not_started.status_code == 503
    assert not_started.headers["retry-after"] == "1"
    assert served.status_code == 202
    assert ready.status_code == 200
    assert stopping.status_code == 503
    assert not_ready_again.status_code == 503
    assert len(emit.deliveries) == 1


async def test_webhook_server_stops_with_its_last_source() -> None:
    emit = FakeEmit()
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    async with serving({"path": "/one"}, {"path": "/two"}, emit=emit) as running:
        # uvicorn must leave the host application's signal handling alone
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (
            sigint,
            sigterm,
        )
        server, sources = running.server, running.sources
        port = server.port
        assert port is not None
        assert sources[0].describe()["url"] == f"{server.url}/one"
        await sources[0].stop()
        assert server.serving  # /two still runs
        assert (await running.client.post("/two", content=b"{}")).status_code == 202
        assert (await running.client.post("/one", content=b"{}")).status_code == 503
        await sources[1].stop()
        assert not server.serving
        assert server.port is None
        assert server.app.routes == []

    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/healthz")


async def test_webhook_server_dying_fails_run_and_restart_serves_again() -> None:
    shared: dict[str, Any] = {}
    source = create_source({"path": "/r"}, make_ctx(shared, unique_trigger(), []))
    server = webhook.webhook_server(shared)
    emit = FakeEmit()
    await source.start()  # what the engine does before spawning run(): the port is bound now
    assert server.port is not None
    task = asyncio.create_task(source.run(emit))
    try:
        await eventually(lambda: server.app.ready)
        assert server._uvicorn is not None
        server._uvicorn.should_exit = True  # uvicorn ends although a trigger still needs it
        with pytest.raises(WebhookServerError, match="unexpectedly"):
            await asyncio.wait_for(task, 5)
        assert not server.serving

        # the engine's supervisor: start() again, then run() again
        await source.start()
        task = asyncio.create_task(source.run(emit))
        await eventually(lambda: server.app.ready)
        async with httpx.AsyncClient(base_url=server.url or "") as client:
            response = await client.post("/r", content=b"{}")
        assert response.status_code == 202
    finally:
        await stop_all([source], [task] if not task.done() else [])


async def test_webhook_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = TriggerConfig(webhook_port=port)
        source = create_source({"path": "/x"}, make_ctx({}, unique_trigger(), [], config))
        with pytest.raises(WebhookServerError, match="SAGAZ_WEBHOOK_PORT") as excinfo:
            await source.run(FakeEmit())
    assert str(port) in str(excinfo.value)
    assert isinstance(excinfo.value, OSError)
    await source.stop()


async def test_webhook_app_mounted_under_a_prefix_in_a_parent_app() -> None:
    shared: dict[str, Any] = {}
    parent = Starlette(routes=[Mount("/hooks", app=webhook.webhook_app(shared))])
    source = create_source(
        {"path": "/orders/{order_id}", "auth": "bearer", "tokens": "t0k"},
        make_ctx(shared, unique_trigger(), []),
    )
    emit = FakeEmit()
    task = asyncio.create_task(source.run(emit))
    try:
        server = webhook.webhook_server(shared)
        await eventually(lambda: server.app.ready)
        assert server.port is None  # mounted: sagaz listens on no port of its own
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            accepted = await client.post(
                "/hooks/orders/7?x=1", json={"a": 1}, headers={"Authorization": "Bearer t0k"}
            )
            unauthorised = await client.post("/hooks/orders/7", json={"a": 1})
            health = await client.get("/hooks/healthz")
            ready = await client.get("/hooks/readyz")
            unknown = await client.post("/hooks/elsewhere", json={})
            outside = await client.post("/orders/7", json={})
    finally:
        await stop_all([source], [task])

    assert accepted.status_code == 202
    assert unauthorised.status_code == 401
    assert (health.status_code, ready.status_code) == (200, 200)
    assert unknown.status_code == 404
    assert outside.status_code == 404  # the parent's own 404
    request = emit.deliveries[0].payload
    assert (request.path, request.path_params, request.query_params) == (
        "/orders/7",
        {"order_id": "7"},
        {"x": "1"},
    )


def test_webhook_same_method_and_path_twice_names_both_triggers() -> None:
    shared: dict[str, Any] = {}
    first, second = unique_trigger("first"), unique_trigger("second")
    create_source({"path": "/orders/{order_id}"}, make_ctx(shared, first, []))
    create_source({"path": "/orders/{order_id}", "method": "PUT"}, make_ctx(shared, first, []))
    with pytest.raises(ConfigurationError) as excinfo:
        create_source({"path": "/orders/{id}"}, make_ctx(shared, second, []))
    message = str(excinfo.value)
    assert first in message
    assert second in message
    assert "POST /orders/{id}" in message


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        ({"path": "/x", "auth": "bearer"}, "SAGAZ_WEBHOOK_TOKENS"),
        ({"path": "/x", "auth": "hmac"}, "SAGAZ_WEBHOOK_HMAC_SECRET"),
    ],
)
def test_webhook_auth_without_credentials_fails_at_create(
    options: dict[str, Any], hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAGAZ_WEBHOOK_TOKENS", raising=False)
    monkeypatch.delenv("SAGAZ_WEBHOOK_HMAC_SECRET", raising=False)
    trigger_id = unique_trigger()
    with pytest.raises(ConfigurationError, match=hint) as excinfo:
        create_source(options, make_ctx({}, trigger_id, [], TriggerConfig(webhook_port=0)))
    assert trigger_id in str(excinfo.value)


# -- load -----------------------------------------------------------------------------------


async def test_webhook_500_concurrent_requests_get_only_202_or_503() -> None:
    capacity = 120
    accepted: list[str] = []

    async def respond(delivery: Delivery) -> AdmissionResult:
        await asyncio.sleep(0)  # let other requests interleave with this admission
        if len(accepted) < capacity:
            accepted.append(f"saga-{len(accepted)}")
            return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id=accepted[-1])
        return AdmissionResult(AdmissionOutcome.REJECTED, reason=Reason.REJECTED)

    emit = FakeEmit(respond)
    async with serving({"path": "/load"}, emit=emit) as running:
        # 20 clients x 25 connections: all 500 requests in flight at once (one httpx pool
        # queueing hundreds of requests is slow on the client side, not the server's)
        clients = [
            httpx.AsyncClient(
                base_url=running.client.base_url, limits=httpx.Limits(max_connections=25)
            )
            for _ in range(20)
        ]
        try:
            responses = await asyncio.gather(
                *(client.post("/load", json={"n": n}) for client in clients for n in range(25))
            )
        finally:
            for client in clients:
                await client.aclose()

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 503}
    assert statuses.count(202) == capacity
    assert statuses.count(503) == 500 - capacity
    saga_ids = [r.json()["saga_id"] for r in responses if r.status_code == 202]
    assert sorted(saga_ids) == sorted(accepted)  # every 202 counted once
    assert len(emit.deliveries) == 500
