"""The ``sagaz`` command: triggers list, dlq list/show/replay/purge on a SQLite store; the
``--store`` option, exit statuses and errors every command shares."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.records import DeadLetterRecord, TriggerScheduleRecord
from sagaz.storage.sqlite import SQLiteSagaStore

APP = textwrap.dedent(
    """
    from pydantic import BaseModel

    from sagaz import Saga, action, trigger

    class Count(BaseModel):
        n: int

    class CliSaga(Saga):
        saga_name = "cli-saga"

        @trigger(source="memory", channel="cli")
        def on_event(self, event: dict) -> dict:
            return {"n": event["n"]}

        @trigger(source="memory", channel="cli-typed")
        def on_typed(self, event: Count) -> dict:
            return {"n": event.n}

        @action("one")
        async def one(self, ctx) -> dict:
            return {"done": True}
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    module = f"cliapp_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield module
    sys.modules.pop(module, None)


def test_triggers_list(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triggers", "list", app]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["TRIGGER", "SOURCE", "STATE", "OPTIONS"]
    [row] = [r for r in rows if r.startswith("cli-saga.on_event ")]
    assert row.split()[1:3] == ["memory", "running"]  # no sagaz data in the store: running
    assert '"channel": "cli"' in row
    assert row.index("memory") == header.index("SOURCE")  # columns are aligned

    assert main(["triggers", "list", app, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["triggers"]
    assert {t["trigger_id"] for t in listed} == {"cli-saga.on_event", "cli-saga.on_typed"}
    assert listed[0]["source"] == "memory" and listed[0]["saga_name"] == "cli-saga"
    assert listed[0]["options"]["channel"] == "cli"


async def _record_triggers(db: Path) -> None:
    """What an engine writes for the app's triggers when it starts."""
    async with SQLiteSagaStore(str(db)) as store:
        for method in ("on_event", "on_typed"):
            await store.save_trigger_schedule(
                TriggerScheduleRecord(f"cli-saga.{method}", "cli-saga", 0, True)
            )


def test_triggers_pause_and_resume_in_the_store_and_list_shows_the_state(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    db = tmp_path / "triggers.db"
    store = ["--store", f"sqlite:///{db}"]
    assert main([*store, "triggers", "list"]) == 2  # a mistyped --store creates nothing
    assert "holds no sagaz data yet" in capsys.readouterr().err
    asyncio.run(_record_triggers(db))

    assert main([*store, "triggers", "pause", "cli-saga.on_event"]) == 0
    assert "paused trigger cli-saga.on_event" in capsys.readouterr().out
    assert main([*store, "triggers", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["TRIGGER", "SAGA", "STATE", "LAST", "POLL"]
    assert [row.split()[:3] for row in rows] == [
        ["cli-saga.on_event", "cli-saga", "paused"],
        ["cli-saga.on_typed", "cli-saga", "running"],
    ]
    assert main([*store, "triggers", "list", app]) == 0
    _, *rows = capsys.readouterr().out.splitlines()
    assert sorted(row.split()[:3] for row in rows) == [
        ["cli-saga.on_event", "memory", "paused"],
        ["cli-saga.on_typed", "memory", "running"],
    ]
    assert main([*store, "triggers", "list", "--json"]) == 0
    states = {t["trigger_id"]: t["state"] for t in json.loads(capsys.readouterr().out)["triggers"]}
    assert states == {"cli-saga.on_event": "paused", "cli-saga.on_typed": "running"}

    assert main([*store, "triggers", "resume", "cli-saga.on_event"]) == 0
    assert "resumed trigger cli-saga.on_event" in capsys.readouterr().out
    assert main([*store, "triggers", "list"]) == 0
    assert ["cli-saga.on_event", "cli-saga", "running"] in [
        row.split()[:3] for row in capsys.readouterr().out.splitlines()
    ]

    assert main([*store, "triggers", "pause", "cli-saga.on_evnt"]) == 2
    error = capsys.readouterr().err
    assert "no trigger 'cli-saga.on_evnt' in the store" in error
    assert "known: cli-saga.on_event, cli-saga.on_typed" in error


async def _seed(url: Path) -> int:
    async with SQLiteSagaStore(str(url)) as store:
        return await store.add_dead_letter(
            DeadLetterRecord(
                trigger_id="cli-saga.on_event",
                saga_name="cli-saga",
                payload={"n": 5},
                error="RuntimeError: boom",
                reason="retries_exhausted",
            )
        )


def test_dlq_list_show_replay_purge(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    db = tmp_path / "dlq.db"
    dead_id = asyncio.run(_seed(db))
    store = ["--store", f"sqlite:///{db}"]
    assert main([*store, "dlq", "list"]) == 0
    assert "retries_exhausted" in capsys.readouterr().out
    assert main([*store, "dlq", "show", str(dead_id)]) == 0
    assert '"n": 5' in capsys.readouterr().out
    assert main([*store, "dlq", "replay", str(dead_id), "--modules", app]) == 0
    assert "completed" in capsys.readouterr().out
    assert main([*store, "dlq", "list"]) == 0
    assert capsys.readouterr().out == ""  # a successful replay removes the dead letter
    asyncio.run(_seed(db))
    assert main([*store, "dlq", "purge"]) == 0
    assert "purged 1" in capsys.readouterr().out


def test_dlq_replay_gives_a_typed_trigger_the_body_of_an_envelope(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    async def seed(url: Path) -> int:
        async with SQLiteSagaStore(str(url)) as store:
            return await store.add_dead_letter(
                DeadLetterRecord(
                    trigger_id="cli-saga.on_typed",
                    saga_name="cli-saga",
                    payload={"MessageId": "m-1", "Body": {"n": 7}},  # the whole message
                    error="RuntimeError: boom",
                    reason="retries_exhausted",
                    meta={"body": '{"n": 7}'},  # the settlement keeps an envelope's body
                )
            )

    db = tmp_path / "dlq.db"
    dead_id = asyncio.run(seed(db))
    assert (
        main(["--store", f"sqlite:///{db}", "dlq", "replay", str(dead_id), "--modules", app]) == 0
    )
    assert "completed" in capsys.readouterr().out


# -- replay finds the saga by itself, or says what to pass ------------------------------------
async def _seed_failed(db: Path, app: str) -> int:
    """A dead letter as the engine writes it: the saga's module stored with it."""
    from sagaz import TriggerConfig
    from sagaz.engine.engine import TriggerEngine
    from sagaz.triggers import registry

    module = __import__(app)
    module.BROKEN = True
    async with SQLiteSagaStore(str(db)) as store:
        async with TriggerEngine(TriggerConfig(max_retries=0), store) as engine:
            [saga_id] = await engine.fire("cli-flaky", {"n": 3})
            await engine.wait_for(saga_id, timeout=10)
        [dead] = await store.list_dead_letters()
    registry.clear()  # as in a fresh `sagaz` process
    sys.modules.pop(app, None)
    assert dead.id is not None
    return dead.id


FLAKY_APP = APP + textwrap.dedent(
    """
    import os

    BROKEN = os.environ.get("CLI_FLAKY_BROKEN") == "1"

    class FlakySaga(Saga):
        saga_name = "cli-flaky"

        @trigger(source="memory", channel="cli-flaky")
        def on_event(self, event: dict) -> dict:
            return {"n": event["n"]}

        @action("one")
        async def one(self, ctx) -> dict:
            if BROKEN:
                raise RuntimeError("still broken")
            return {"done": True}
    """
)


@pytest.fixture
def flaky_app(app: str, tmp_path: Path) -> str:
    (tmp_path / f"{app}.py").write_text(FLAKY_APP)
    return app


def test_dlq_replay_imports_the_stored_module_and_replaces_a_dead_letter_that_fails_again(
    flaky_app: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from sagaz.triggers import registry

    db = tmp_path / "dlq.db"
    dead_id = asyncio.run(_seed_failed(db, flaky_app))
    store = ["--store", f"sqlite:///{db}"]

    monkeypatch.setenv("CLI_FLAKY_BROKEN", "1")
    assert main([*store, "dlq", "replay", str(dead_id)]) == 1
    out = capsys.readouterr().out
    assert f"replayed dead letter {dead_id}: compensated again" in out
    assert f"it is now dead letter {dead_id + 1}" in out
    registry.clear()  # a fresh `sagaz` process again
    sys.modules.pop(flaky_app, None)

    monkeypatch.setenv("CLI_FLAKY_BROKEN", "0")
    assert main([*store, "dlq", "replay", str(dead_id + 1)]) == 0
    assert "completed" in capsys.readouterr().out
    assert main([*store, "dlq", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_dlq_replay_of_a_module_that_does_not_import_says_what_to_pass(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    async def seed(url: Path) -> int:
        async with SQLiteSagaStore(str(url)) as store:
            return await store.add_dead_letter(
                DeadLetterRecord(
                    trigger_id="gone-saga.on_event",
                    saga_name="gone-saga",
                    payload=b'{"n": 1}',
                    error="RuntimeError: boom",
                    reason="retries_exhausted",
                    meta={"format": 2, "saga_module": "gone_app.sagas", "identity": "x"},
                )
            )

    db = tmp_path / "dlq.db"
    dead_id = asyncio.run(seed(db))
    store = ["--store", f"sqlite:///{db}"]
    assert main([*store, "dlq", "replay", str(dead_id)]) == 2
    err = capsys.readouterr().err
    assert "needs the module 'gone_app.sagas', which cannot be imported here" in err
    assert f"sagaz dlq replay {dead_id} --modules myapp.sagas" in err
    assert "Traceback" not in err

    # a module that imports but no longer defines the trigger
    assert main([*store, "dlq", "replay", str(dead_id), "--modules", app]) == 2
    err = capsys.readouterr().err
    assert "'gone-saga.on_event', which importing" in err and "cli-saga.on_event" in err

    assert main([*store, "dlq", "replay", "999"]) == 2
    assert "no dead letter 999" in capsys.readouterr().err
    assert main([*store, "dlq", "list"]) == 0
    assert str(dead_id) in capsys.readouterr().out  # nothing ran: the dead letter is kept


def test_dlq_show_prints_bytes_as_bytes_not_a_repr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    async def seed(url: Path) -> int:
        async with SQLiteSagaStore(str(url)) as store:
            return await store.add_dead_letter(
                DeadLetterRecord(
                    trigger_id="t.m",
                    saga_name="t",
                    payload={"body": b'{"n": 1}', "raw": b"\xff\x00"},
                    error="e",
                    reason="r",
                )
            )

    db = tmp_path / "dlq.db"
    dead_id = asyncio.run(seed(db))
    assert main(["--store", f"sqlite:///{db}", "dlq", "show", str(dead_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["payload"] == {"body": {"bytes": '{"n": 1}'}, "raw": {"bytes_base64": "/wA="}}


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"sagaz {importlib.metadata.version('sagaz')}\n"


# -- what every command shares: --store, tables, --json, exit statuses -----------------------
def test_dlq_list_is_a_table_or_json_with_the_store_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    db = tmp_path / "dlq.db"
    dead_id = asyncio.run(_seed(db))
    url = f"sqlite:///{db}"
    assert main(["dlq", "list", "--store", url]) == 0  # an error before: --store came first
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "ID", "TRIGGER", "SOURCE", "REASON", "ATTEMPTS", "SAGA", "ID", "CREATED", "ERROR"
    ]  # fmt: skip
    assert row.split()[:5] == [str(dead_id), "cli-saga.on_event", "-", "retries_exhausted", "0"]
    assert row.endswith("RuntimeError: boom")

    assert main(["dlq", "list", "--json", "--store", url]) == 0
    [listed] = json.loads(capsys.readouterr().out)["dead_letters"]
    assert (listed["id"], listed["payload"], listed["error"]) == (
        dead_id,
        {"n": 5},
        "RuntimeError: boom",
    )

    assert main(["dlq", "list", "--trigger", "other.on_event", "--store", url]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # no rows: nothing for a script to read
    assert "no dead letters" in captured.err

    assert main(["dlq", "show", str(dead_id), "--store", url]) == 0
    shown = capsys.readouterr().out
    assert "reason      retries_exhausted" in shown
    assert "error       RuntimeError: boom" in shown


def test_the_store_is_the_option_after_the_subcommand_then_before_then_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    seeded, empty = tmp_path / "seeded.db", tmp_path / "empty.db"
    dead_id = asyncio.run(_seed(seeded))
    asyncio.run(_seed(empty))
    assert main(["--store", f"sqlite:///{empty}", "dlq", "purge"]) == 0
    capsys.readouterr()

    def listed(*argv: str) -> list[int]:
        assert main([*argv]) == 0
        return [d["id"] for d in json.loads(capsys.readouterr().out)["dead_letters"]]

    monkeypatch.setenv("SAGAZ_STORE_URL", f"sqlite:///{seeded}")
    assert listed("dlq", "list", "--json") == [dead_id]
    assert listed("--store", f"sqlite:///{empty}", "dlq", "list", "--json") == []
    assert listed(
        "--store", f"sqlite:///{empty}", "dlq", "list", "--json", "--store", f"sqlite:///{seeded}"
    ) == [dead_id]


def test_mistakes_are_one_line_and_an_exit_status_never_a_traceback(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(status: int, *argv: str) -> str:
        assert main([*argv]) == status
        captured = capsys.readouterr()
        assert captured.err.startswith("sagaz: ") and captured.err.count("\n") == 1
        assert "Traceback" not in captured.err
        return captured.err

    assert "has no scheme" in fails(2, "sagas", "list", "--store", "sagaz.db")
    assert "unsupported store URL scheme 'mysql'" in fails(2, "dlq", "list", "--store", "mysql://x")
    missing = tmp_path / "typo.db"
    err = fails(2, "sagas", "list", "--store", f"sqlite:///{missing}")
    assert f"sqlite:///{missing} holds no sagaz data yet" in err
    assert not missing.exists()  # a mistyped path creates no database
    err = fails(1, "sagas", "list", "--store", "postgresql://127.0.0.1:1/nothing")
    assert "cannot connect to PostgreSQL at postgresql://127.0.0.1:1/nothing" in err
    err = fails(1, "dlq", "list", "--store", "redis://127.0.0.1:1/0")
    assert "cannot use Redis at redis://127.0.0.1:1/0" in err
    assert "cannot import 'no_such_module'" in fails(2, "triggers", "list", "no_such_module")
    broken = f"broken_{app}"
    (tmp_path / f"{broken}.py").write_text(
        "from sagaz import Saga, trigger\n\n"
        "class Broken(Saga):\n"
        "    @trigger(source='carrier-pigeon')\n"
        "    def on_event(self, event):\n"
        "        return event\n"
    )
    try:
        assert "carrier-pigeon" in fails(2, "triggers", "list", broken)  # a mistake in the code
    finally:
        sys.modules.pop(broken, None)

    import asyncio

    db = tmp_path / "dlq.db"
    asyncio.run(_seed(db))
    url = f"sqlite:///{db}"
    assert f"no saga nope in {url}" in fails(2, "sagas", "show", "nope", "--store", url)
    assert f"no dead letter 999 in {url}" in fails(2, "dlq", "show", "999", "--store", url)


def test_usage_mistakes_exit_2_and_the_help_documents_the_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["dlq", "show"], ["sagas", "list", "--limit", "0"], ["sagas", "frobnicate"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "exit status: 0 done; 1 the operation failed" in out
    assert "2 a usage mistake" in out
