"""The ``sagaz`` command: triggers list, dlq list/show/replay/purge on a SQLite store."""

from __future__ import annotations

import importlib.metadata
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
    out = capsys.readouterr().out
    assert "cli-saga.on_event\tmemory" in out
    assert '"channel": "cli"' in out


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
    assert main([*store, "triggers", "list"]) == 0
    assert "no trigger in" in capsys.readouterr().err
    asyncio.run(_record_triggers(db))

    assert main([*store, "triggers", "pause", "cli-saga.on_event"]) == 0
    assert "paused trigger cli-saga.on_event" in capsys.readouterr().out
    assert main([*store, "triggers", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "cli-saga.on_event\tcli-saga\tpaused",
        "cli-saga.on_typed\tcli-saga\trunning",
    ]
    assert main([*store, "triggers", "list", app]) == 0
    listed = capsys.readouterr().out
    assert "cli-saga.on_event\tmemory\tpaused\t" in listed
    assert "cli-saga.on_typed\tmemory\trunning\t" in listed

    assert main([*store, "triggers", "resume", "cli-saga.on_event"]) == 0
    assert "resumed trigger cli-saga.on_event" in capsys.readouterr().out
    assert main([*store, "triggers", "list"]) == 0
    assert "cli-saga.on_event\tcli-saga\trunning" in capsys.readouterr().out

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
    import json

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
    assert main(["--store", f"sqlite:///{db}", "dlq", "show", str(dead_id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["payload"] == {"body": {"bytes": '{"n": 1}'}, "raw": {"bytes_base64": "/wA="}}


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"sagaz {importlib.metadata.version('sagaz')}\n"
