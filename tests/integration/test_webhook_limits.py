"""The webhook server under abuse: bounded storage, bounded connections (real sockets).

Raw ``asyncio`` streams to 127.0.0.1 play the clients that httpx would not be: one that
trickles its headers or body, one with too many or too large headers, one more connection
than allowed. Every refusal must be answered (or the connection closed), counted per reason,
and stored nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.abc import SourceContext
from sagaz.clock import SystemClock
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery
from sagaz.sources.webhook import source as webhook
from sagaz.sources.webhook.server import WebhookServer
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from sagaz.triggers.options import WebhookOptions
from tests.services import unique_name

pytest.importorskip("uvicorn")


# -- a webhook server with a fake pipeline ---------------------------------------------------


@dataclass
class Gate:
    """An ``emit`` that records deliveries and answers 202 once ``opened`` is set."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    deliveries: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> AdmissionResult:
        self.deliveries.append(delivery)
        await self.opened.wait()
        return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id=uuid.uuid4().hex)


@dataclass
class Served:
    server: WebhookServer
    port: int
    url: str

    def rejected(self, reason: str) -> int:
        return self.server.app.rejections.total(reason)


@contextlib.asynccontextmanager
async def serving(emit: Gate, **limits: Any) -> AsyncIterator[Served]:
    """One webhook trigger ``POST /orders`` on a free port, with ``limits`` in its config."""
    config = TriggerConfig(webhook_port=0, shutdown_timeout=2, **limits)
    shared: dict[str, Any] = {}

    async def report_error(exc: BaseException) -> None:
        raise AssertionError(f"the webhook source reported {exc!r}")

    ctx = SourceContext(
        trigger_id=f"{unique_name('limits')}.on_order",
        saga_name="limits",
        config=config,
        store=MemorySagaStore(),
        clock=SystemClock(),
        worker_id="worker-1",
        report_error=report_error,
        shared=shared,
    )
    source = webhook.create(WebhookOptions(path="/orders"), ctx)
    task = asyncio.create_task(source.run(emit))
    try:
        await eventually(lambda: source.server.app.ready, what="the webhook route")
        assert source.server.port is not None and source.server.url is not None
        yield Served(source.server, source.server.port, source.server.url)
    finally:
        emit.opened.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.stop()


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.1 response with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split(" ", 2)[1]), headers, body)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(4096):
            received += chunk
    return bytes(received)


def post(body: bytes, *extra_headers: str) -> bytes:
    head = [
        "POST /orders HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra_headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def trickle(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    """Send ``data`` one byte per ``interval`` seconds until done or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)  # the pace of a slow client, not a wait for a result


@dataclass
class SlowClient:
    """A connection that sends a request one byte at a time and records how it ended."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened_at: float
    closed_after: float | None = None
    received: bytes = b""

    async def run(self, data: bytes, interval: float) -> None:
        sender = asyncio.create_task(trickle(self.writer, data, interval))
        try:
            self.received = await read_until_closed(self.reader)
            self.closed_after = time.monotonic() - self.opened_at
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


async def connect(port: int) -> SlowClient:
    # the clock starts before the connection exists: the server's deadline starts later (at
    # its accept), so ``closed_after`` is never shorter than the server's timeout, however
    # late this coroutine resumes after the connect on a busy machine
    opened_at = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return SlowClient(reader, writer, opened_at)


# -- slow clients ---------------------------------------------------------------------------


async def test_200_trickled_headers_are_cut_off_with_408_while_a_new_request_is_served() -> None:
    header_timeout = 2.0
    emit = Gate()
    emit.opened.set()
    async with serving(emit, webhook_header_timeout=header_timeout) as served:
        slow = [await connect(served.port) for _ in range(200)]
        request = post(b'{"order_id": "slow"}')
        runs = [asyncio.create_task(client.run(request, interval=1.0)) for client in slow]
        try:
            # the 200 are sending their first bytes: a new connection is served at once
            async with httpx.AsyncClient(base_url=served.url, timeout=5) as client:
                response = await client.post("/orders", json={"order_id": "fast"})
            # answered while all 200 still hold their connections
            assert all(client.closed_after is None for client in slow)
            async with asyncio.timeout(header_timeout + 5):
                await asyncio.gather(*runs)
        finally:
            for run in runs:
                run.cancel()
        timeouts = served.rejected("timeout")

    assert response.status_code == 202, response.text
    assert len(emit.deliveries) == 1  # only the fast request reached the pipeline
    closed_after = sorted(c.closed_after for c in slow if c.closed_after is not None)
    assert len(closed_after) == 200
    # closed by the server at its deadline, long before the ~80 s the request needs here
    assert header_timeout - 0.1 <= closed_after[0] and closed_after[-1] <= header_timeout + 2
    assert all(c.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for c in slow)
    assert timeouts == 200


async def test_trickled_body_is_cut_off_with_408_and_never_reaches_the_pipeline() -> None:
    emit = Gate()
    async with serving(emit, webhook_body_timeout=1.0) as served:
        client = await connect(served.port)
        body = json.dumps({"order_id": "slow-body", "padding": "x" * 40}).encode()
        head, _, rest = post(body).partition(b"\r\n\r\n")
        client.writer.write(head + b"\r\n\r\n" + rest[:5])  # the headers at once
        async with asyncio.timeout(5):
            await client.run(rest[5:], interval=0.2)  # then 5 bytes per second
        assert served.rejected("timeout") == 1

    assert client.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert client.closed_after is not None and 0.9 <= client.closed_after <= 3
    assert emit.deliveries == []


async def test_connection_that_sends_nothing_is_closed_at_the_header_deadline() -> None:
    async with serving(Gate(), webhook_header_timeout=0.5) as served:
        client = await connect(served.port)
        async with asyncio.timeout(5):
            await client.run(b"", interval=1)
        assert served.rejected("timeout") == 1

    assert client.received == b""  # nothing asked, nothing answered: just closed
    assert client.closed_after is not None and client.closed_after < 3


async def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    emit = Gate()
    emit.opened.set()
    async with serving(emit, webhook_keep_alive_timeout=1, webhook_header_timeout=30) as served:
        client = await connect(served.port)
        client.writer.write(post(b'{"order_id": "keep"}'))
        answer = await read_answer(client.reader)
        started = time.monotonic()
        async with asyncio.timeout(5):
            rest = await read_until_closed(client.reader)
        idle = time.monotonic() - started
        client.writer.close()

    assert answer.status == 202
    assert rest == b""
    assert 0.8 <= idle <= 3


# -- caps -----------------------------------------------------------------------------------


async def test_requests_beyond_the_concurrency_cap_get_503_with_retry_after() -> None:
    emit = Gate()  # closed: the admitted requests stay in flight
    async with serving(emit, webhook_max_concurrent_requests=2) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            held = [
                asyncio.create_task(client.post("/orders", json={"order_id": str(n)}))
                for n in range(2)
            ]
            await eventually(lambda: len(emit.deliveries) == 2, what="2 requests in flight")
            beyond = await client.post("/orders", json={"order_id": "third"})
            emit.opened.set()
            admitted = await asyncio.gather(*held)
            after = await client.post("/orders", json={"order_id": "fourth"})
        overloaded = served.rejected("overloaded")

    assert (beyond.status_code, beyond.headers["retry-after"]) == (503, "1")
    assert "2 requests are in flight" in beyond.json()["error"]
    assert [r.status_code for r in admitted] == [202, 202]
    assert after.status_code == 202  # the cap frees up with the requests
    assert len(emit.deliveries) == 3
    assert overloaded == 1


async def test_connection_beyond_the_connection_cap_gets_503_and_is_closed() -> None:
    emit = Gate()
    emit.opened.set()
    async with serving(emit, webhook_max_connections=3) as served:
        idle = [await connect(served.port) for _ in range(3)]
        extra = await connect(served.port)
        extra.writer.write(post(b'{"order_id": "extra"}'))
        async with asyncio.timeout(5):
            answer = await read_answer(extra.reader)
            assert await read_until_closed(extra.reader) == b""
        for client in idle:  # the connections within the cap are served
            client.writer.write(post(b'{"order_id": "within"}'))
            assert (await read_answer(client.reader)).status == 202
            client.writer.close()
        extra.writer.close()
        overloaded = served.rejected("overloaded")

    assert (answer.status, answer.headers["retry-after"]) == (503, "1")
    assert answer.headers["connection"] == "close"
    assert overloaded == 1
    assert len(emit.deliveries) == 3


async def test_too_many_or_too_large_headers_get_431() -> None:
    emit = Gate()
    emit.opened.set()
    async with serving(emit, webhook_max_headers=20, webhook_max_header_bytes=2048) as served:
        many = await connect(served.port)
        many.writer.write(post(b"{}", *(f"X-Extra-{n}: {n}" for n in range(30))))
        large = await connect(served.port)
        large.writer.write(post(b"{}", "X-Large: " + "y" * 4096))
        unfinished = await connect(served.port)  # a head that never ends, past the limit
        unfinished.writer.write(post(b"{}", "X-Large: " + "y" * 4096).split(b"\r\n\r\n")[0])
        async with asyncio.timeout(5):
            answers = [await read_answer(c.reader) for c in (many, large, unfinished)]
        for client in (many, large, unfinished):
            client.writer.close()
        counts = (served.rejected("too_many_headers"), served.rejected("headers_too_large"))

    assert [a.status for a in answers] == [431, 431, 431]
    assert "more than 20 header fields" in json.loads(answers[0].body)["error"]
    assert "larger than 2048 bytes" in json.loads(answers[1].body)["error"]
    assert "larger than 2048 bytes" in json.loads(answers[2].body)["error"]
    assert counts == (1, 2)
    assert emit.deliveries == []


async def test_malformed_http_gets_400_without_a_log_line_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(Gate()) as served:
        answers = []
        for _ in range(20):
            client = await connect(served.port)
            client.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            async with asyncio.timeout(5):
                answers.append(await read_answer(client.reader))
            client.writer.close()
        bad = served.rejected("bad_request")

    assert {a.status for a in answers} == {400}
    assert bad == 20
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]  # first + summary at stop


# -- invalid events and the opt-in dead letters ---------------------------------------------


class Order(BaseModel):
    order_id: str
    amount: float = Field(gt=0)


def define_orders(**options: Any) -> str:
    """A saga with one webhook trigger at ``/orders`` and ``options``; returns its name."""
    name = unique_name("orders")

    class Orders(Saga):
        saga_name = name

        @trigger(source="webhook", path="/orders", **options)
        def on_order(self, order: Order) -> dict[str, Any]:
            return order.model_dump()

        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            return None

    return name


@contextlib.asynccontextmanager
async def engine_serving() -> AsyncIterator[tuple[TriggerEngine, httpx.AsyncClient]]:
    config = TriggerConfig(webhook_port=0, shutdown_timeout=5)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        server = webhook.webhook_server(engine.shared)
        await eventually(lambda: server.app.ready, what="the webhook routes")
        assert server.url is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield engine, client


async def invalid(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.post("/orders", json={"order_id": f"bad-{n}", "amount": -n})


async def test_invalid_requests_are_not_dead_lettered_by_default() -> None:
    name = define_orders()
    async with engine_serving() as (engine, client):
        answers = [await invalid(client, n) for n in range(5)]
        dead = await engine.store.list_dead_letters()
        rejections = webhook.webhook_server(engine.shared).app.rejections

    assert {a.status_code for a in answers} == {400}
    assert dead == []
    assert rejections.counts[("invalid_body", f"{name}.on_order")] == 5
    assert rejections.dead_letters_capped == {}


async def test_dead_letter_invalid_keeps_them_up_to_the_cap_and_counts_the_rest() -> None:
    name = define_orders(dead_letter_invalid=True, dead_letter_invalid_limit=3)
    trigger_id = f"{name}.on_order"
    async with engine_serving() as (engine, client):
        answers = [await invalid(client, n) for n in range(7)]
        dead = await engine.store.list_dead_letters(trigger_id=trigger_id)
        rejections = webhook.webhook_server(engine.shared).app.rejections
        from sagaz.engine.prometheus import render

        text = render(engine)[0].decode()

    assert {a.status_code for a in answers} == {400}
    assert sorted(json.loads(d.payload["body"])["order_id"] for d in dead) == [
        "bad-0",
        "bad-1",
        "bad-2",
    ]
    assert {d.reason for d in dead} == {"invalid"}
    assert rejections.counts[("invalid_body", trigger_id)] == 7
    assert rejections.dead_letters_capped[trigger_id] == 4
    rejected = f'reason="invalid_body",trigger="{trigger_id}"'
    assert f"sagaz_webhook_requests_rejected_total{{{rejected}}} 7.0" in text
    assert f'sagaz_webhook_invalid_dead_letters_capped_total{{trigger="{trigger_id}"}} 4.0' in text
