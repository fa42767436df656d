"""The dashboard (``sagaz.dashboard_app``): tokens on every page, CSRF on every action, read-only
tokens take no action, nothing from an event or a context is rendered unescaped, bounded pages,
and the engine serving it at ``/sagaz`` when ``TriggerConfig.dashboard`` is on."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import sagaz
from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.exceptions import ConfigurationError
from sagaz.records import (
    DeadLetterRecord,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    StepRecord,
    TriggerScheduleRecord,
)
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from sagaz.types import StepStatus

TOKEN = "full-token"
READER = "reader-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PAGES = ["/", "/triggers", "/sagas", "/dead-letters", "/sagas/s1", "/dead-letters/1"]


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash")


async def seeded() -> MemorySagaStore:
    store = MemorySagaStore()
    await store.start()
    evil = {"note": "<script>alert(1)</script>"}
    await store.save_saga(
        SagaRecord("s1", "orders", SagaStatus.COMPENSATED, dict(evil), trigger_id="t", event=evil)
    )
    await store.save_step(StepRecord("s1", "charge", StepStatus.FAILED, error="<b>no</b>"))
    await store.add_dead_letter(DeadLetterRecord("t", "orders", evil, "boom", "failed"))
    await store.save_trigger_schedule(TriggerScheduleRecord("t", "orders", 0, False))
    return store


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, html
    return found.group(1)


async def test_every_page_needs_a_token_and_answers_401_without_one() -> None:
    store = await seeded()
    app = sagaz.dashboard_app(store=store, tokens=[TOKEN])
    async with client(app) as http:
        for path in PAGES:
            response = await http.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            assert (await http.get(path, headers=BEARER)).status_code in (200, 303), path
        for action in ("/triggers/t/pause", "/dead-letters/purge"):
            assert (await http.post(action)).status_code == 401


async def test_a_dashboard_without_tokens_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a token"):
        sagaz.dashboard_app(store=MemorySagaStore(), tokens=[])


async def test_an_engine_with_the_dashboard_on_and_no_token_does_not_start() -> None:
    class Guarded(Saga):
        @trigger(source="memory", channel="guarded")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("noop")
        async def noop(self, ctx: Any) -> None:
            return None

    engine = TriggerEngine(TriggerConfig(dashboard=True, webhook_port=0), MemorySagaStore())
    with pytest.raises(ConfigurationError, match="needs a token"):
        await engine.start()
    assert not engine.running


async def test_the_login_form_sets_a_cookie_that_opens_the_pages() -> None:
    app = sagaz.dashboard_app(store=await seeded(), tokens=[TOKEN])
    async with client(app) as http:
        assert (await http.post("/login", data={"token": "nope"})).status_code == 401
        response = await http.post("/login", data={"token": TOKEN})
        assert response.status_code == 303
        assert TOKEN not in response.headers["set-cookie"]  # a digest, not the token
        assert (await http.get("/triggers")).status_code == 200


async def test_an_action_without_the_csrf_token_is_403_and_with_it_works() -> None:
    store = await seeded()
    app = sagaz.dashboard_app(store=store, tokens=[TOKEN])
    async with client(app) as http:
        page = (await http.get("/triggers", headers=BEARER)).text
        assert (await http.post("/triggers/t/pause", headers=BEARER)).status_code == 403
        bad = await http.post("/triggers/t/pause", headers=BEARER, data={"csrf": "0" * 64})
        assert bad.status_code == 403
        assert [s.enabled for s in await store.list_trigger_schedules()] == [True]
        ok = await http.post("/triggers/t/pause", headers=BEARER, data={"csrf": csrf_of(page)})
        assert ok.status_code == 303
        assert [s.enabled for s in await store.list_trigger_schedules()] == [False]
        assert "Resume" in (await http.get("/triggers", headers=BEARER)).text
        purge = await http.post(
            "/dead-letters/purge", headers=BEARER, data={"csrf": csrf_of(page), "id": "1"}
        )
        assert purge.status_code == 303
        assert await store.list_dead_letters() == []


async def test_a_read_only_token_sees_no_button_and_may_take_no_action() -> None:
    store = await seeded()
    app = sagaz.dashboard_app(store=store, tokens=[TOKEN], read_only_tokens=[READER])
    reader = {"Authorization": f"Bearer {READER}"}
    async with client(app) as http:
        page = await http.get("/triggers", headers=reader)
        assert page.status_code == 200
        assert "Pause" not in page.text and 'name="csrf"' not in page.text
        assert "Replay" not in (await http.get("/dead-letters/1", headers=reader)).text
        full = (await http.get("/triggers", headers=BEARER)).text
        for action in ("/triggers/t/pause", "/dead-letters/purge"):
            response = await http.post(action, headers=reader, data={"csrf": csrf_of(full)})
            assert response.status_code == 403
    assert [s.enabled for s in await store.list_trigger_schedules()] == [True]
    assert len(await store.list_dead_letters()) == 1


async def test_an_event_with_a_script_is_shown_as_text() -> None:
    app = sagaz.dashboard_app(store=await seeded(), tokens=[TOKEN])
    async with client(app) as http:
        for path in ("/sagas/s1", "/dead-letters/1", "/dead-letters", "/sagas"):
            html = (await http.get(path, headers=BEARER)).text
            assert "<script>" not in html and "<b>" not in html, path
        saga = (await http.get("/sagas/s1", headers=BEARER)).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in saga
        assert "&lt;b&gt;no&lt;/b&gt;" in saga  # the failed step's error


async def test_the_triggers_page_counts_queued_and_not_started_events_per_trigger() -> None:
    gate = asyncio.Event()

    class Slow(Saga):
        @trigger(source="memory", channel="slow", max_concurrent_sagas=1)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("wait")
        async def wait(self, ctx: Any) -> None:
            await gate.wait()

    class Picky(Saga):
        @trigger(source="memory", channel="picky", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return dict(event) if event["n"] else None

        @action("one")
        async def one(self, ctx: Any) -> None:
            return None

    def cells(html: str, trigger_id: str) -> dict[str, str]:
        row = re.search(rf'<tr data-trigger="{re.escape(trigger_id)}">(.*?)</tr>', html, re.S)
        assert row is not None, html
        found = re.findall(r'<td class="([a-z_-]+)[^"]*">(.*?)</td>', row.group(1), re.S)
        return {name: re.sub(r"<[^>]+>", "", text).strip() for name, text in found}

    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        for n in range(3):
            await engine.fire("slow", {"n": n})
        for n in (0, 1):  # filtered, started
            await engine.fire("picky", {"n": n})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 1)
        await engine.fire("picky", {"n": 1})  # its saga completed: a duplicate
        app = sagaz.dashboard_app(engine=engine, tokens=[TOKEN])
        async with client(app) as http:
            html = (await http.get("/triggers", headers=BEARER)).text
        gate.set()

    slow, picky = cells(html, "slow.on_event"), cells(html, "picky.on_event")
    assert (slow["queued"], slow["not-started"]) == ("2", "0")  # one runs, two wait
    assert (picky["queued"], picky["not-started"]) == ("0", "duplicate: 1, filtered: 1")
    assert '<span id="queue-depth">2</span>' in html  # the engine's whole queue


async def test_the_saga_list_is_paged_and_filtered() -> None:
    store = MemorySagaStore()
    await store.start()
    for n in range(120):
        status = SagaStatus.COMPLETED if n % 2 else SagaStatus.COMPENSATED
        await store.save_saga(SagaRecord(f"s{n:03}", "orders", status, {}, trigger_id="t"))
    app = sagaz.dashboard_app(store=store, tokens=[TOKEN])
    async with client(app) as http:
        first = (await http.get("/sagas?limit=100000", headers=BEARER)).text
        ids = re.findall(r'href="/sagas/(s\d+)"', first)
        assert len(ids) == 50  # bounded whatever ?limit= asks
        after = re.search(r'after=(s\d+)"', first)
        assert after is not None and after.group(1) == ids[-1]
        second = (await http.get(f"/sagas?after={ids[-1]}", headers=BEARER)).text
        more = re.findall(r'href="/sagas/(s\d+)"', second)
        assert len(more) == 50 and not set(more) & set(ids)
        failed = (await http.get("/sagas?status=compensated", headers=BEARER)).text
        assert set(re.findall(r'class="status">(\w+)<', failed)) == {"compensated"}


async def test_the_engine_serves_the_dashboard_at_sagaz_without_a_webhook_trigger() -> None:
    class Shop(Saga):
        @trigger(source="memory", channel="shop")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            return None

    config = TriggerConfig(dashboard=True, dashboard_tokens=[TOKEN], webhook_port=0)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        url = engine.dashboard_url
        assert url is not None and url.endswith("/sagaz")
        [saga_id] = await engine.fire("shop", {"n": 1})
        await engine.wait_for(saga_id, timeout=5)
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/triggers")).status_code == 401
            page = await http.get(url + "/triggers", headers=BEARER)
            assert page.status_code == 200
            assert "shop.on_order" in page.text
            assert 'class="completed">1<' in page.text
            link = await http.get(url + "/sagas", headers=BEARER)
            assert f'href="/sagaz/sagas/{saga_id}"' in link.text
    assert engine.dashboard_url is None


async def test_the_dashboard_is_off_by_default() -> None:
    class Idle(Saga):
        @trigger(source="memory", channel="idle")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("noop")
        async def noop(self, ctx: Any) -> None:
            return None

    async with TriggerEngine(TriggerConfig(webhook_port=0), MemorySagaStore()) as engine:
        assert engine.dashboard_url is None


async def test_sagaz_ui_serves_the_dashboard_of_a_store(tmp_path: Path) -> None:
    from sagaz.storage.sqlite import SQLiteSagaStore

    url = f"sqlite:///{tmp_path / 'ui.db'}"
    async with SQLiteSagaStore(str(tmp_path / "ui.db")) as store:
        await store.save_saga(SagaRecord("s-ui", "orders", SagaStatus.COMPLETED, {}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(sagaz.__file__).parents[1])}
    command = [sys.executable, "-m", "sagaz.cli.main", "ui", "--store", url, "--port", str(port)]
    process = await asyncio.create_subprocess_exec(
        *command, "--token", TOKEN, env=env, cwd=tmp_path
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def answers() -> bool:
                try:
                    return (await http.get("/sagaz/sagas", headers=BEARER)).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, within=20)
            assert "s-ui" in (await http.get("/sagaz/sagas", headers=BEARER)).text
            assert (await http.get("/sagaz/sagas")).status_code == 401
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    no_token = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(no_token.communicate(), 30)
    assert no_token.returncode == 2
    assert b"needs a token" in stderr


async def test_the_dashboard_shares_the_server_of_the_webhook_triggers() -> None:
    class Hooked(Saga):
        @trigger(source="webhook", path="/orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            return None

    config = TriggerConfig(dashboard=True, dashboard_tokens=[TOKEN], webhook_port=0)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        url = engine.dashboard_url
        assert url is not None
        root = url.removesuffix("/sagaz")
        async with httpx.AsyncClient() as http:
            accepted = await http.post(root + "/orders", json={"n": 1})
            assert accepted.status_code == 202
            await engine.wait_for(accepted.json()["saga_id"], timeout=5)
            page = await http.get(url + "/triggers", headers=BEARER)
            assert 'data-trigger="hooked.on_order"' in page.text
            assert 'class="received">1<' in page.text
            assert (await http.get(root + "/healthz")).status_code == 200
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.TransportError):  # the last holder released the server
            await http.get(url + "/triggers", headers=BEARER)


async def test_a_sagas_history_and_open_request_are_shown() -> None:
    store = await seeded()
    await store.add_saga_history(SagaHistoryRecord("s1", "cancel_requested", "ann@ops", "oops"))
    await store.add_saga_history(SagaHistoryRecord("s1", "cancel_missed", "w1", "<i>late</i>"))
    await store.add_saga_request(SagaControlRequest("s1", SagaAction.RESUME, actor="bob@ops"))
    app = sagaz.dashboard_app(store=store, tokens=[TOKEN])
    async with client(app) as http:
        html = (await http.get("/sagas/s1", headers=BEARER)).text
    history = html[html.index('id="history"') :]
    assert "cancel_requested" in history and "ann@ops" in history and "oops" in history
    assert "&lt;i&gt;late&lt;/i&gt;" in history
    assert "Open request: resume" in html and "bob@ops" in html


async def test_a_sagas_page_cancels_resumes_and_retries_it_with_the_csrf_token() -> None:
    store = await seeded()  # s1: compensated, trigger t
    await store.save_saga(SagaRecord("s2", "orders", SagaStatus.RUNNING, {}, trigger_id="t"))
    app = sagaz.dashboard_app(store=store, tokens=[TOKEN], read_only_tokens=[READER])
    reader = {"Authorization": f"Bearer {READER}"}
    async with client(app) as http:
        page = (await http.get("/sagas/s1", headers=BEARER)).text
        assert 'id="cancel"' in page and 'id="resume"' in page and 'id="retry"' in page
        assert 'id="steer"' not in (await http.get("/sagas/s1", headers=reader)).text
        csrf = csrf_of(page)
        refused = [
            await http.post("/sagas/s1/cancel", headers=BEARER),  # no CSRF token
            await http.post("/sagas/s1/cancel", headers=BEARER, data={"csrf": "0" * 64}),
            await http.post("/sagas/s1/cancel", headers=reader, data={"csrf": csrf}),
        ]
        assert [r.status_code for r in refused] == [403, 403, 403]
        assert await store.list_saga_requests() == []

        done = await http.post(
            "/sagas/s1/cancel", headers=BEARER, data={"csrf": csrf, "reason": "<b>gone</b>"}
        )
        assert done.status_code == 303
        assert done.headers["location"].startswith("/sagas/s1?message=cancel%20requested")
        [request] = await store.list_saga_requests()
        assert (request.saga_id, request.action, request.reason) == (
            "s1",
            SagaAction.CANCEL,
            "<b>gone</b>",
        )
        assert request.actor is not None and request.actor.startswith("dashboard")
        shown = (await http.get(done.headers["location"], headers=BEARER)).text
        assert "cancel requested" in shown
        assert "&lt;b&gt;gone&lt;/b&gt;" in shown  # the history entry, escaped
        # one open request per saga: the engines' answer is shown, with what to do
        again = await http.post("/sagas/s1/resume", headers=BEARER, data={"csrf": csrf})
        shown = (await http.get(again.headers["location"], headers=BEARER)).text
        assert "not done: saga s1: a cancel request by dashboard" in shown
        assert "is still open; wait until the engines have acted on it" in shown

        running = (await http.get("/sagas/s2", headers=BEARER)).text
        assert 'id="cancel"' in running and 'id="resume"' not in running
        assert 'id="retry"' not in running
        no_step = await http.post("/sagas/s2/retry", headers=BEARER, data={"csrf": csrf})
        assert no_step.status_code == 400
        resumed = await http.post("/sagas/s2/resume", headers=BEARER, data={"csrf": csrf})
        shown = (await http.get(resumed.headers["location"], headers=BEARER)).text
        assert "not done: saga s2 is running" in shown
        unknown = await http.post("/sagas/s2/explode", headers=BEARER, data={"csrf": csrf})
        assert unknown.status_code == 404

        await store.save_saga(SagaRecord("s3", "orders", SagaStatus.COMPLETED, {}, trigger_id="t"))
        await store.save_step(StepRecord("s3", "charge", StepStatus.COMPLETED))
        page = (await http.get("/sagas/s3", headers=BEARER)).text
        assert 'id="retry"' in page and '<option value="charge">' in page
        assert 'id="cancel"' not in page
        retried = await http.post(
            "/sagas/s3/retry", headers=BEARER, data={"csrf": csrf, "step": "charge"}
        )
        assert retried.headers["location"].startswith("/sagas/s3?message=retry%20requested")
    requests = {r.saga_id: r for r in await store.list_saga_requests()}
    assert sorted(requests) == ["s1", "s3"]
    assert (requests["s3"].action, requests["s3"].step) == (SagaAction.RETRY, "charge")


async def test_run_now_fires_a_cron_trigger_of_the_serving_engine_once() -> None:
    ran: list[str] = []

    class Nightly(Saga):
        saga_name = "dash-nightly"

        @trigger(source="cron", schedule="0 3 * * *")
        def on_tick(self, tick: sagaz.CronTick) -> dict[str, Any]:
            return {"at": tick.scheduled_at.isoformat()}

        @action("report")
        async def report(self, ctx: Any) -> None:
            ran.append(ctx["at"])

    class Orders(Saga):
        saga_name = "dash-orders"

        @trigger(source="memory", channel="dash-orders")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> None:
            return None

    store = MemorySagaStore()
    engine = TriggerEngine(TriggerConfig(), store, start_sources=False)
    async with engine:
        app = sagaz.dashboard_app(engine=engine, tokens=[TOKEN], read_only_tokens=[READER])
        async with client(app) as http:
            page = (await http.get("/triggers", headers=BEARER)).text
            nightly = page[page.index('data-trigger="dash-nightly.on_tick"') :]
            assert 'class="run"' in nightly[: nightly.index("</tr>")]
            orders = page[page.index('data-trigger="dash-orders.on_event"') :]
            assert 'class="run"' not in orders[: orders.index("</tr>")]  # events come from outside
            csrf = csrf_of(page)
            reader = {"Authorization": f"Bearer {READER}"}
            refused = await http.post(
                "/triggers/dash-nightly.on_tick/run", headers=reader, data={"csrf": csrf}
            )
            assert refused.status_code == 403
            assert (
                await http.post("/triggers/dash-nightly.on_tick/run", headers=BEARER)
            ).status_code == 403

            done = await http.post(
                "/triggers/dash-nightly.on_tick/run", headers=BEARER, data={"csrf": csrf}
            )
            assert done.status_code == 303
            shown = (await http.get(done.headers["location"], headers=BEARER)).text
            assert "dash-nightly.on_tick: started, saga " in shown
            await eventually(lambda: len(ran) == 1, what="the saga of the tick")
            again = await http.post(
                "/triggers/dash-nightly.on_tick/run", headers=BEARER, data={"csrf": csrf}
            )
            await eventually(lambda: len(ran) == 2, what="a second run: each click is an event")

            wrong = await http.post(
                "/triggers/dash-orders.on_event/run", headers=BEARER, data={"csrf": csrf}
            )
            shown = (await http.get(wrong.headers["location"], headers=BEARER)).text
            assert "not run: cannot run trigger" in shown and "events come from outside" in shown
    assert again.status_code == 303
    sagas = await store.list_sagas(saga_name="dash-nightly")
    assert len(sagas) == 2
    await store.stop()
