"""A store at an older schema version refuses to start: so do the engine and ``Saga.run``,
with the command that migrates it (SQLite here; every store in the contract suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.config import reset_configuration
from sagaz.engine.engine import TriggerEngine
from sagaz.exceptions import SchemaOutdatedError
from sagaz.storage import SQLiteSagaStore
from tests.schema_support import make_outdated


@pytest.fixture
def upgraded() -> type[Saga]:
    class Upgraded(Saga):
        saga_name = "upgraded"

        @trigger(source="memory", channel="upgraded")
        def on_event(self, event: dict[str, int]) -> dict[str, int]:
            return dict(event)

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            return None

    return Upgraded


@pytest.mark.usefixtures("upgraded")
async def test_the_engine_refuses_an_outdated_schema_and_starts_after_the_upgrade(
    tmp_path: Path,
) -> None:
    store = SQLiteSagaStore(tmp_path / "old.db")
    await make_outdated(store)
    engine = TriggerEngine(TriggerConfig(), store)
    with pytest.raises(SchemaOutdatedError) as refused:
        await engine.start()
    assert not engine.running
    assert f"run: sagaz db upgrade --store sqlite:///{store.path}" in str(refused.value)

    await store.upgrade_schema()
    async with engine:
        [saga_id] = await engine.fire("upgraded", {"n": 1})
        result = await engine.wait_for(saga_id, timeout=10)
    assert result.status == "completed"
    await store.stop()


async def test_saga_run_refuses_an_outdated_schema(
    upgraded: type[Saga], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    await make_outdated(SQLiteSagaStore(db))
    monkeypatch.setenv("SAGAZ_STORE_URL", f"sqlite:///{db}")
    reset_configuration()
    try:
        with pytest.raises(SchemaOutdatedError, match="sagaz db upgrade"):
            await upgraded().run({"n": 1})
    finally:
        reset_configuration()
