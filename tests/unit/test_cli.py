"""The ``sagaz`` command: triggers list, dlq list/show/replay/purge on a SQLite store."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.records import DeadLetterRecord
from sagaz.storage.sqlite import SQLiteSagaStore

APP = textwrap.dedent(
    """
    from sagaz import Saga, action, trigger

    class CliSaga(Saga):
        saga_name = "cli-saga"

        @trigger(source="memory", channel="cli")
        def on_event(self, event: dict) -> dict:
            return {"n": event["n"]}

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


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"sagaz {importlib.metadata.version('sagaz')}\n"
