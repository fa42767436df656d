"""``sagaz triggers run ID`` and ``sagaz triggers backfill ID`` through the command's entry
point, on a SQLite store: what they start, what they print, and the mistakes they name."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.records import TriggerScheduleRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.triggers import registry
from sagaz.types import SagaStatus

APP = textwrap.dedent(
    """
    from sagaz import Fire, Saga, Trigger, action, trigger

    class Depth(Trigger):
        poll_interval = 60.0

        async def poll(self):
            return Fire({"depth": 12})

    class Reports(Saga):
        saga_name = "cli-reports"

        @trigger(source="cron", schedule="0 * * * *")
        def on_tick(self, tick) -> dict:
            return {"tick": tick.scheduled_at.isoformat()}

        @trigger(source="custom", trigger=Depth())
        def on_depth(self, ctx: dict) -> dict:
            return dict(ctx)

        @trigger(source="memory", channel="reports")
        def on_event(self, event: dict) -> dict:
            return dict(event)

        @action("build")
        async def build(self, ctx) -> dict:
            return {"built": True}
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = f"cli_schedules_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield module
    sys.modules.pop(module, None)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite store with its schema, and the app's cron trigger recorded, as an engine that
    ran once leaves it."""
    path = tmp_path / "schedules.db"

    async def create() -> None:
        async with SQLiteSagaStore(path) as store:
            await store.save_trigger_schedule(
                TriggerScheduleRecord("cli-reports.on_tick", "cli-reports", 0, True)
            )

    asyncio.run(create())
    return path


def sagas_of(db: Path, trigger_id: str) -> list[SagaStatus]:
    async def read() -> list[SagaStatus]:
        async with SQLiteSagaStore(db) as store:
            found = await store.list_sagas(limit=1000)
        return [s.status for s in found if s.trigger_id == trigger_id]

    return asyncio.run(read())


def test_backfill_starts_each_tick_once_and_a_repeat_starts_none(
    app: str, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        *("triggers", "backfill", "cli-reports.on_tick"),
        *("--from", "2026-01-01T01:00Z", "--to", "2026-01-02T12:00Z"),
        *("--modules", app, "--store", f"sqlite:///{db}"),
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.split() == ["TICK", "OUTCOME", "SAGA", "ID", "STATUS", "ERROR"]
    assert len(rows) == 36
    assert rows[0].startswith("2026-01-01T01:00:00+00:00  started ")
    assert all(row.split()[1:2] == ["started"] and "completed" in row for row in rows)
    assert "backfilled trigger cli-reports.on_tick: started 36, skipped 0" in err
    assert sagas_of(db, "cli-reports.on_tick") == [SagaStatus.COMPLETED] * 36

    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["started"], report["skipped"]) == (0, 36)
    assert {run["outcome"] for run in report["runs"]} == {"duplicate"}
    assert {run["status"] for run in report["runs"]} == {"completed"}
    assert report["runs"][0]["tick"] == "2026-01-01T01:00:00+00:00"
    assert len(sagas_of(db, "cli-reports.on_tick")) == 36


def test_run_now_starts_one_saga_per_call_and_says_so(
    app: str, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", f"sqlite:///{db}"]
    for trigger_id in ("cli-reports.on_tick", "cli-reports.on_depth"):
        for _ in range(2):
            assert main(["triggers", "run", trigger_id, "--modules", app, *store]) == 0
            out, err = capsys.readouterr()
            [row] = out.splitlines()[1:]
            assert row.split()[0] == "started" and "completed" in row
            assert f"ran trigger {trigger_id} now: started 1, skipped 0" in err
        assert sagas_of(db, trigger_id) == [SagaStatus.COMPLETED] * 2

    argv = ["triggers", "run", "cli-reports.on_depth", "--modules", app, *store]
    assert main([*argv, "--context", '{"depth": 99}', "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert (run["outcome"], run["status"]) == ("started", "completed")
    assert len(sagas_of(db, "cli-reports.on_depth")) == 3


def test_a_paused_trigger_runs_as_asked_and_the_report_says_it_is_paused(
    app: str, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", f"sqlite:///{db}"]
    assert main(["triggers", "pause", "cli-reports.on_tick", *store]) == 0
    capsys.readouterr()
    assert main(["triggers", "run", "cli-reports.on_tick", "--modules", app, *store]) == 0
    assert "(the trigger is paused; it ran as asked)" in capsys.readouterr().err
    assert sagas_of(db, "cli-reports.on_tick") == [SagaStatus.COMPLETED]


def test_mistakes_name_what_to_fix(app: str, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ["--store", f"sqlite:///{db}"]

    def fails(*argv: str) -> str:
        assert main([*argv, *store]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("sagaz: ") and captured.err.count("\n") == 1
        assert "Traceback" not in captured.err
        return captured.err

    def backfill(start: str, end: str, *more: str, trigger_id: str = "on_tick") -> str:
        return fails(
            *("triggers", "backfill", f"cli-reports.{trigger_id}", "--from", start, "--to", end),
            *("--modules", app, *more),
        )

    err = fails("triggers", "run", "cli-reports.on_tik", "--modules", app)
    assert "unknown trigger 'cli-reports.on_tik'" in err
    assert "register: cli-reports.on_depth, cli-reports.on_event, cli-reports.on_tick" in err
    assert "the store knows: cli-reports.on_tick" in err
    err = fails("triggers", "run", "cli-reports.on_event", "--modules", app)
    assert "it is a memory trigger" in err and "sagaz.fire_event" in err
    err = fails("triggers", "run", "cli-reports.on_tick", "--modules", app, "--context", "{}")
    assert "--context is for poll triggers" in err
    err = fails("triggers", "run", "cli-reports.on_depth", "--modules", app, "--context", "{x")
    assert "--context is not JSON" in err

    err = backfill("2026-01-01T00:00Z", "2026-01-01T05:00Z", trigger_id="on_depth")
    assert "it is a poll trigger, and only a cron trigger has ticks to backfill" in err
    err = backfill("2026-01-02T00:00Z", "2026-01-01T00:00Z")
    assert "starts (2026-01-02T00:00:00+00:00) after it ends" in err and "swap" in err
    err = backfill("2026-01-01T00:00Z", "2026-01-03T00:00Z", "--max", "24")
    assert "holds more than 24 ticks of '0 * * * *'" in err and "--max N" in err
    err = backfill("2026-01-01T00:00Z", "2999-01-01T00:00Z")
    assert "ends in the future" in err and "--to now" in err
    err = backfill("yesterday", "now")
    assert "--from 'yesterday' is not a time" in err
    assert sagas_of(db, "cli-reports.on_tick") == []  # no mistake started anything

    registry.clear()  # as in a new process: nothing registers the trigger
    sys.modules.pop(app)
    err = fails("triggers", "run", "cli-reports.on_tick")
    assert "name the modules that define its saga" in err and "--modules myapp.sagas" in err
