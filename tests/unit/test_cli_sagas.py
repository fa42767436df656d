"""``sagaz sagas list`` and ``sagaz sagas show`` on a SQLite store."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.clock import utcnow
from sagaz.records import SagaRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus

SHOP = textwrap.dedent(
    """
    from sagaz import Saga, action, compensate, trigger

    class ShopSaga(Saga):
        saga_name = "shop"

        @trigger(source="memory", channel="shop")
        def on_order(self, event: dict) -> dict:
            return dict(event)

        @action("reserve")
        async def reserve(self, ctx) -> dict:
            return {"reserved": ctx["qty"]}

        @compensate("reserve")
        async def release(self, ctx) -> None:
            return None

        @action("notify", depends_on=["reserve"])
        async def notify(self, ctx) -> dict:
            return {"notified": True}

        @compensate("notify")
        async def unnotify(self, ctx) -> None:
            return None

        @action("charge", depends_on=["notify"])
        async def charge(self, ctx) -> dict:
            if ctx["amount"] > 100:
                raise RuntimeError(f"card declined: {ctx['amount']}")
            return {"charged": ctx["amount"]}
    """
)


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = f"shop_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(SHOP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


async def _run_orders(db: Path, shop: str, *amounts: int) -> list[str]:
    """Run one order per amount through the engine (no retries); return their saga ids."""
    from sagaz import TriggerConfig
    from sagaz.engine.engine import TriggerEngine

    __import__(shop)
    saga_ids = []
    async with SQLiteSagaStore(db) as store, TriggerEngine(TriggerConfig(), store) as engine:
        for amount in amounts:
            [saga_id] = await engine.fire("shop", {"qty": 2, "amount": amount})
            await engine.wait_for(saga_id, timeout=10)
            saga_ids.append(saga_id)
    return saga_ids


def test_show_of_a_compensated_saga_says_which_step_failed_and_what_was_compensated(
    shop: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "shop.db"
    [saga_id] = asyncio.run(_run_orders(db, shop, 250))
    url = f"sqlite:///{db}"

    assert main(["sagas", "show", saga_id, "--store", url]) == 0
    out = capsys.readouterr().out
    assert f"saga         {saga_id} (shop)" in out
    assert "status       compensated, attempt 1" in out
    assert "trigger      shop.on_order" in out
    assert "failed step  charge: RuntimeError: card declined: 250" in out
    assert "compensated  notify, reserve" in out  # in the order they were undone
    table = out[out.index("STEP") :].splitlines()
    assert table[0].split() == ["STEP", "STATUS", "ATTEMPTS", "LAST", "CHANGE", "ERROR"]
    steps = {line.split()[0]: line.split() for line in table[1:4]}
    assert steps["reserve"][1:3] == ["compensated", "1"]
    assert steps["notify"][1:3] == ["compensated", "1"]
    assert steps["charge"][1:3] == ["failed", "1"]
    assert steps["charge"][3].startswith("+") and steps["charge"][3].endswith("s")
    assert " ".join(steps["charge"][4:]) == "RuntimeError: card declined: 250"
    context = json.loads(out[out.index("\ncontext\n") + 9 :])
    assert context == {"qty": 2, "amount": 250, "reserved": 2, "notified": True}

    assert main(["sagas", "show", saga_id, "--json", "--store", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["saga_id"], shown["status"], shown["attempt"]) == (saga_id, "compensated", 1)
    assert shown["failed_step"] == "charge"
    assert shown["failed_step_error"] == "RuntimeError: card declined: 250"
    assert shown["compensated"] == ["notify", "reserve"]
    assert shown["compensation_errors"] == {}
    assert [(s["name"], s["status"]) for s in shown["steps"]] == [
        ("reserve", "compensated"),
        ("notify", "compensated"),
        ("charge", "failed"),
    ]
    assert shown["error"] == "step 'charge' failed: RuntimeError: card declined: 250"
    assert datetime.fromisoformat(shown["created_at"]) <= datetime.fromisoformat(
        shown["steps"][2]["updated_at"]
    )


def test_show_of_a_completed_saga(
    shop: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "shop.db"
    [saga_id] = asyncio.run(_run_orders(db, shop, 50))
    assert main(["sagas", "show", saga_id, "--store", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert "status       completed, attempt 1" in out
    assert "failed step" not in out and "compensated " not in out
    assert '"charged": 50' in out


async def _seed_sagas(db: Path) -> datetime:
    """Seven sagas of two names and triggers, created an hour apart; return the first."""
    first = utcnow().replace(microsecond=0) - timedelta(hours=10)
    specs = [
        ("s0", "orders", "orders.on_order", SagaStatus.COMPLETED),
        ("s1", "orders", "orders.on_web", SagaStatus.COMPENSATED),
        ("s2", "payments", "payments.on_payment", SagaStatus.COMPLETED),
        ("s3", "orders", "orders.on_order", SagaStatus.FAILED),
        ("s4", "orders", "orders.on_order", SagaStatus.RUNNING),
        ("s5", "payments", "payments.on_payment", SagaStatus.COMPLETED),
        ("s6", "orders", "orders.on_order", SagaStatus.COMPLETED),
    ]
    async with SQLiteSagaStore(db) as store:
        for n, (saga_id, name, trigger_id, status) in enumerate(specs):
            await store.create_saga(
                SagaRecord(
                    saga_id,
                    name,
                    status,
                    {"n": n},
                    trigger_id=trigger_id,
                    error="boom" if status is SagaStatus.FAILED else None,
                    created_at=first + timedelta(hours=n),
                )
            )
    return first


def test_list_is_newest_first_filtered_by_status_saga_trigger_and_age(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sagas.db"
    first = asyncio.run(_seed_sagas(db))
    url = f"sqlite:///{db}"

    def ids(*argv: str) -> list[str]:
        assert main(["sagas", "list", *argv, "--json", "--store", url]) == 0
        return [s["saga_id"] for s in json.loads(capsys.readouterr().out)["sagas"]]

    assert ids() == ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]
    assert ids("--status", "completed") == ["s6", "s5", "s2", "s0"]
    assert ids("--saga", "payments") == ["s5", "s2"]
    assert ids("--trigger", "orders.on_order", "--status", "completed") == ["s6", "s0"]
    # s0 is 10 h old ... s6 4 h: older than 4.5 h is s0..s5, newer than 7.5 h is s3..s6
    assert ids("--older-than", "270m", "--newer-than", "7.5h") == ["s5", "s4", "s3"]
    assert ids("--older-than", "270m", "--newer-than", "7.5h", "--status", "running") == ["s4"]
    at = (first + timedelta(hours=2)).isoformat()
    assert ids("--older-than", at) == ["s1", "s0"]  # an ISO 8601 moment: strictly before
    assert ids("--newer-than", at.replace("+00:00", "")) == ["s6", "s5", "s4", "s3", "s2"]
    assert ids("--older-than", "1w") == []

    assert main(["sagas", "list", "--store", url]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "SAGA", "ID", "SAGA", "STATUS", "ATTEMPT", "TRIGGER", "CREATED", "UPDATED", "ERROR"
    ]  # fmt: skip
    assert [row.split()[0] for row in rows] == ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]
    assert rows[3].split()[1:5] == ["orders", "failed", "1", "orders.on_order"]
    assert rows[3].endswith("boom")
    created = (first + timedelta(hours=3)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert created in rows[3]

    assert main(["sagas", "list", "--saga", "nope", "--store", url]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "no sagas match\n")


def test_list_pages_with_limit_and_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sagas.db"
    asyncio.run(_seed_sagas(db))
    url = f"sqlite:///{db}"

    assert main(["sagas", "list", "--limit", "3", "--store", url]) == 0
    captured = capsys.readouterr()
    assert [row.split()[0] for row in captured.out.splitlines()[1:]] == ["s6", "s5", "s4"]
    assert captured.err == "more: the next page is --after s4\n"

    pages, after = [], None
    while True:
        extra = ["--after", after] if after else []
        assert main(["sagas", "list", "--limit", "3", "--json", *extra, "--store", url]) == 0
        page = json.loads(capsys.readouterr().out)
        pages.append([s["saga_id"] for s in page["sagas"]])
        if (after := page["next"]) is None:
            break
    assert pages == [["s6", "s5", "s4"], ["s3", "s2", "s1"], ["s0"]]

    assert main(["sagas", "list", "--after", "gone", "--store", url]) == 2
    assert f"--after gone: no such saga in {url}" in capsys.readouterr().err
