"""The saga object a run uses: the harness's instance, instances or a factory given to the engine,
and a clear error at start for a class the engine cannot build."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.replay import replay
from sagaz.exceptions import ConfigurationError
from sagaz.records import SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import TriggerTestHarness, eventually
from sagaz.triggers import TriggerDefinition, TriggerRegistry, registry


class FakePayments:
    """A client the saga is constructed with (a test double here)."""

    def __init__(self) -> None:
        self.charged: list[tuple[int, int]] = []  # (order id, id of the saga object)


class PaymentSaga(Saga):
    saga_name = "instances-payments"

    def __init__(self, payments: FakePayments) -> None:
        self.payments = payments

    @trigger(source="memory", channel="instances-orders")
    def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": event["order_id"], "transformed_by": id(self)}

    @action("charge")
    async def charge(self, ctx: Any) -> dict[str, Any]:
        self.payments.charged.append((ctx["order_id"], id(self)))
        return {"charged_by": id(self)}


def payment_triggers() -> list[TriggerDefinition]:
    # each test starts with an empty registry (tests/conftest.py): module-level sagas are
    # not in it
    return TriggerRegistry().register_saga(PaymentSaga)


def engine(store: MemorySagaStore | None = None, **options: Any) -> TriggerEngine:
    store = store or MemorySagaStore()
    return TriggerEngine(TriggerConfig(), store, triggers=payment_triggers(), **options)


async def run_orders(engine: TriggerEngine, *order_ids: int) -> list[Any]:
    saga_ids = [(await engine.fire("instances-orders", {"order_id": n}))[0] for n in order_ids]
    return [await engine.wait_for(saga_id, timeout=10) for saga_id in saga_ids]


async def test_the_harness_runs_the_steps_on_the_instance_it_was_given() -> None:
    payments = FakePayments()
    saga = PaymentSaga(payments)
    async with TriggerTestHarness(saga) as harness:
        result = await harness.run("on_order", {"order_id": 1})
    assert result is not None and result.status is SagaStatus.COMPLETED, result
    assert payments.charged == [(1, id(saga))]
    assert result.context["transformed_by"] == id(saga)


async def test_the_harness_uses_an_instance_configured_after_construction() -> None:
    class ConfiguredSaga(Saga):
        saga_name = "instances-configured"
        payments: FakePayments | None = None

        @trigger(source="memory", channel="instances-configured")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"order_id": event["order_id"]}

        @action("charge")
        async def charge(self, ctx: Any) -> None:
            assert self.payments is not None, "a fresh instance, not the one under test"
            self.payments.charged.append((ctx["order_id"], id(self)))

    saga = ConfiguredSaga()
    saga.payments = FakePayments()
    async with TriggerTestHarness(saga) as harness:
        result = await harness.run("on_order", {"order_id": 2})
    assert result is not None and result.status is SagaStatus.COMPLETED, result.error
    assert saga.payments.charged == [(2, id(saga))]


async def test_an_instance_given_to_the_engine_runs_every_event_of_its_class() -> None:
    payments = FakePayments()
    saga = PaymentSaga(payments)
    async with engine(sagas=[saga]) as running:
        results = await run_orders(running, 1, 2, 3)
    assert all(r and r.status is SagaStatus.COMPLETED for r in results), results
    assert sorted(payments.charged) == [(1, id(saga)), (2, id(saga)), (3, id(saga))]


async def test_a_factory_builds_one_instance_per_run() -> None:
    payments = FakePayments()
    built: list[type[Saga]] = []

    def factory(cls: type[Saga]) -> Saga:
        built.append(cls)
        return PaymentSaga(payments)

    async with engine(saga_factory=factory) as running:
        results = await run_orders(running, 1, 2, 3)
    assert all(r and r.status is SagaStatus.COMPLETED for r in results), results
    assert built == [PaymentSaga] * 4  # once at start (the check), then once per run
    runs = {r.context["order_id"]: r.context for r in results if r}
    for order_id, context in runs.items():  # a run's trigger method and steps share one
        assert (
            context["transformed_by"] == context["charged_by"] == dict(payments.charged)[order_id]
        )
    assert len({context["charged_by"] for context in runs.values()}) == 3


async def test_a_class_the_engine_cannot_build_fails_start_naming_it_and_the_fixes() -> None:
    store = MemorySagaStore()
    unbuildable = TriggerEngine(TriggerConfig(), store, triggers=payment_triggers())
    with pytest.raises(ConfigurationError) as excinfo:
        await unbuildable.start()
    message = str(excinfo.value)
    assert "cannot build the saga class PaymentSaga with PaymentSaga()" in message
    assert "missing 1 required positional argument: 'payments'" in message
    assert "start_triggers(sagas=[PaymentSaga(...)])" in message
    assert "saga_factory=lambda cls: cls(...)" in message
    assert not unbuildable.running


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"sagas": [PaymentSaga]}, "takes saga instances, got the class PaymentSaga"),
        (
            {"sagas": [PaymentSaga(FakePayments()), PaymentSaga(FakePayments())]},
            "two PaymentSaga instances.*saga_factory=",
        ),
        ({"saga_factory": lambda cls: object()}, r"saga_factory\(PaymentSaga\) returned object"),
        (
            {"saga_factory": lambda cls: 1 / 0},
            "cannot build the saga class PaymentSaga with saga_factory: ZeroDivisionError",
        ),
    ],
)
async def test_a_wrong_instance_or_factory_is_explained(options: Any, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        async with engine(**options):
            pass


async def test_start_triggers_takes_the_instances() -> None:
    registry.register_saga(PaymentSaga)  # the plugin restores the registry after the test
    payments = FakePayments()
    saga = PaymentSaga(payments)
    running = await sagaz.start_triggers(store=MemorySagaStore(), sagas=[saga])
    try:
        [saga_id] = await sagaz.fire_event("instances-orders", {"order_id": 9})
        result = await running.wait_for(saga_id, timeout=10)
    finally:
        await sagaz.stop_triggers()
    assert result and result.status is SagaStatus.COMPLETED
    assert payments.charged == [(9, id(saga))]


async def test_a_dead_letter_is_replayed_on_the_instance_given() -> None:
    registry.register_saga(PaymentSaga)  # replay finds its trigger in the registry
    payments = FakePayments()
    saga = PaymentSaga(payments)
    store = MemorySagaStore()
    broken = PaymentSaga(FakePayments())
    broken.payments = None  # type: ignore[assignment]  # every charge fails
    async with TriggerEngine(
        TriggerConfig(max_retries=0), store, triggers=payment_triggers(), sagas=[broken]
    ) as running:
        [result] = await run_orders(running, 4)
    assert result and result.status is SagaStatus.COMPENSATED
    [dead] = await store.list_dead_letters()

    outcome = await replay(store, dead, timeout=10, sagas=[saga])
    assert (outcome.status, outcome.saga_id) == ("completed", dead.saga_id)
    assert payments.charged == [(4, id(saga))]


async def test_a_recovered_saga_runs_on_an_instance_from_the_factory() -> None:
    payments = FakePayments()
    built: list[PaymentSaga] = []

    def factory(cls: type[Saga]) -> Saga:
        built.append(PaymentSaga(payments))
        return built[-1]

    store = MemorySagaStore()
    # accepted by a worker that crashed before it ran the saga
    await store.create_saga(
        SagaRecord(
            "recovered-1",
            "instances-payments",
            SagaStatus.PENDING,
            {"order_id": 5},
            trigger_id="instances-payments.on_order",
            owner="dead",
            lease_expires_at=utcnow() - timedelta(seconds=1),
        )
    )
    async with engine(saga_factory=factory, store=store):
        await eventually(lambda: bool(payments.charged), within=5, what="the saga resumed")
    assert len(built) == 2  # the check at start, then the recovered run's own
    assert payments.charged == [(5, id(built[1]))]
