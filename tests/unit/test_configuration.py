"""Store selection (explicit, configure(), SAGAZ_STORE_URL, default), TriggerConfig env vars,
and the install hint of a missing extra."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz._imports import require_extra
from sagaz.config import reset_configuration, resolve_store
from sagaz.exceptions import ConfigurationError, MissingExtraError
from sagaz.storage import MemorySagaStore, SQLiteSagaStore, store_from_url


@pytest.fixture(autouse=True)
def fresh_configuration() -> Iterator[None]:
    reset_configuration()
    yield
    reset_configuration()


class Tiny(Saga):
    @action("one")
    async def one(self, ctx: SagaContext) -> dict[str, int]:
        return {"one": 1}


async def test_store_from_environment_is_started_and_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("SAGAZ_STORE_URL", f"sqlite:///{db}")
    result = await Tiny().run({}, saga_id="env-1")
    assert result.status is SagaStatus.COMPLETED
    store = resolve_store()
    assert isinstance(store, SQLiteSagaStore)
    await store.stop()
    async with SQLiteSagaStore(str(db)) as reopened:  # it really is on disk
        record = await reopened.get_saga("env-1")
    assert record is not None
    assert record.status is SagaStatus.COMPLETED


async def test_configure_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAZ_STORE_URL", "sqlite:///never-used.db")
    configured = MemorySagaStore()
    sagaz.configure(store=configured)
    await Tiny().run({}, saga_id="cfg-1")
    assert await configured.get_saga("cfg-1") is not None
    explicit = MemorySagaStore()
    await Tiny().run({}, saga_id="cfg-2", store=explicit)
    assert await explicit.get_saga("cfg-2") is not None
    assert await configured.get_saga("cfg-2") is None


def test_default_is_an_in_memory_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGAZ_STORE_URL", raising=False)
    assert isinstance(resolve_store(), MemorySagaStore)


async def test_engine_without_a_store_warns_once_at_start_that_sagas_are_not_durable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Pinged(Saga):
        @trigger(source="memory", channel="pings")
        def on_ping(self, event: Any) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: SagaContext) -> None: ...

    def not_durable() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not durable" in r.getMessage()]

    monkeypatch.delenv("SAGAZ_STORE_URL", raising=False)
    caplog.set_level("WARNING", logger="sagaz")
    engine = await sagaz.start_triggers()
    try:
        for n in range(3):  # events do not repeat it
            [saga_id] = await sagaz.fire_event("pings", {"n": n})
            await engine.wait_for(saga_id, timeout=5)
    finally:
        await sagaz.stop_triggers()
    [warning] = not_durable()
    assert "MemorySagaStore" in warning
    for how in ("store=", "sagaz.configure(store=", "SAGAZ_STORE_URL", "sqlite:///"):
        assert how in warning

    caplog.clear()  # a store chosen explicitly, even a memory one, is not warned about
    sagaz.configure(store=MemorySagaStore())
    await sagaz.start_triggers()
    await sagaz.stop_triggers()
    monkeypatch.setenv("SAGAZ_STORE_URL", "memory://")
    reset_configuration()
    await sagaz.start_triggers()
    await sagaz.stop_triggers()
    assert not_durable() == []


def test_unknown_store_url_lists_the_accepted_forms() -> None:
    with pytest.raises(ConfigurationError, match=r"sqlite:///"):
        store_from_url("mongodb://localhost")


def test_trigger_config_reads_sagaz_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGAZ_QUEUE_SIZE", "42")
    monkeypatch.setenv("SAGAZ_BACKPRESSURE_STRATEGY", "reject")
    monkeypatch.setenv("SAGAZ_WEBHOOK_TOKENS", '["t1", "t2"]')
    config = TriggerConfig()
    assert config.queue_size == 42
    assert config.backpressure_strategy == "reject"
    assert config.webhook_tokens == ["t1", "t2"]
    with pytest.raises(ValueError, match="backpressure_strategy"):
        TriggerConfig(backpressure_strategy="explode")  # type: ignore[arg-type]


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aio_pika", None)
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[rabbitmq\]"'):
        require_extra("rabbitmq")
