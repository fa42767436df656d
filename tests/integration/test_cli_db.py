"""``sagaz db upgrade`` on a database an older sagaz left, for every durable store: before it,
every command refuses with the command to run; after it, everything works and the data is
still there."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.storage import store_from_url
from sagaz.types import SagaStatus
from tests.schema_support import make_outdated
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name


@dataclass
class Outdated:
    url: str
    version: int
    expected: int


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def outdated(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outdated]:
    """A database at the schema version before this sagaz's, holding the saga "old"."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    elif request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = unique_name("cli_db").replace("-", "_")
        url = f"{dsn}?schema={schema}"
    else:
        redis_url = request.getfixturevalue("redis_url")
        prefix = unique_name("cli-db")
        url = f"{redis_url}?prefix={prefix}"
    store = store_from_url(url)
    version = await make_outdated(store)
    expected = (await store.schema_versions()).expected
    try:
        yield Outdated(url, version, expected)
    finally:
        if request.param == "postgres":
            await drop_postgres_schema(dsn, schema)
        elif request.param == "redis":
            await delete_redis_keys(redis_url, prefix)


async def sagaz(*argv: str) -> int:
    """``sagaz ARGV`` in this process (in a thread: the command runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


async def test_db_upgrade_migrates_what_every_command_refused(
    outdated: Outdated, capsys: pytest.CaptureFixture[str]
) -> None:
    url, old, new = outdated.url, outdated.version, outdated.expected
    command = f"run: sagaz db upgrade --store {shlex.quote(url)}"

    assert await sagaz("sagas", "list", "--store", url) == 1
    err = capsys.readouterr().err
    assert f"has schema version {old}, older than the {new} this sagaz needs" in err
    assert err.rstrip().endswith(command)
    assert "Traceback" not in err

    assert await sagaz("db", "status", "--store", url) == 1
    assert capsys.readouterr().out == (
        f"{url}: schema version {old}, this sagaz needs {new}; {command}\n"
    )
    assert await sagaz("db", "status", "--json", "--store", url) == 1
    assert json.loads(capsys.readouterr().out) == {
        "store": url,
        "version": old,
        "expected": new,
        "outdated": True,
    }

    assert await sagaz("db", "upgrade", "--store", url) == 0
    assert capsys.readouterr().out == f"{url}: schema upgraded from version {old} to {new}\n"
    assert await sagaz("db", "upgrade", "--json", "--store", url) == 0  # idempotent
    assert json.loads(capsys.readouterr().out) == {
        "store": url,
        "from_version": new,
        "to_version": new,
    }
    assert await sagaz("db", "status", "--store", url) == 0
    assert capsys.readouterr().out == f"{url}: schema version {new}, current\n"

    assert await sagaz("sagas", "list", "--json", "--store", url) == 0
    [kept] = json.loads(capsys.readouterr().out)["sagas"]
    assert (kept["saga_id"], kept["status"]) == ("old", "completed")
    # the migrated database keeps saga history and requests (schema version 4)
    assert await sagaz("sagas", "show", "old", "--json", "--store", url) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["history"], shown["request"]) == ([], None)
    async with store_from_url(url) as store:  # as if a trigger engine were running it
        running = await store.get_saga("old")
        assert running is not None
        running.trigger_id, running.status = "app.on_event", SagaStatus.RUNNING
        await store.save_saga(running)
    assert await sagaz("sagas", "cancel", "old", "--store", url) == 0
    assert "cancel of saga old requested" in capsys.readouterr().out
    assert await sagaz("sagas", "show", "old", "--json", "--store", url) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in shown["history"]] == ["cancel_requested"]
    assert shown["request"]["action"] == "cancel"
