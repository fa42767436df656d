"""``examples/model_retraining``: the ADR's ``ModelRetrainingSaga``.

* Run as its README says (``python -m examples.model_retraining.main``) against the real
  Kafka broker: drift events above the threshold retrain (training streams checkpoints to
  the evaluation step), one below it is skipped, one the model cannot recover from fails
  the quality gate and is compensated.
* The ``@daily`` cron trigger, in-process: the example's saga class with its real cron
  source on a ``FakeClock`` set just before midnight, so midnight comes at once.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from examples.model_retraining.events import DriftEvent
from examples.model_retraining.settings import RetrainingSettings

from sagaz import SagaStatus, TriggerConfig
from sagaz.engine.engine import TriggerEngine
from sagaz.records import SagaRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import FakeClock, eventually
from sagaz.triggers.registration import TriggerRegistry
from sagaz.types import TERMINAL_SAGA_STATUSES, StepStatus
from tests.fixtures_kafka import MakeTopic
from tests.services import unique_name

from .running import EXAMPLES, run_command, running_example

README = EXAMPLES / "model_retraining" / "README.md"
SEND = re.compile(r"^python -m examples\.model_retraining\.send '(?P<event>[^']+)'$", re.MULTILINE)


def readme_events() -> list[str]:
    """The drift events the README sends, in its order."""
    events = [found["event"] for found in SEND.finditer(README.read_text())]
    assert [DriftEvent.model_validate_json(e).model_id for e in events] == [
        "churn",
        "pricing",
        "fraud",
    ], f"{README} sends other drift events than this test expects"
    return events


async def test_drift_events_retrain_skip_or_fail_the_quality_gate(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic, tmp_path: Path
) -> None:
    names = RetrainingSettings(
        drift_topic=await make_kafka_topic("model.drift", partitions=1),
        kafka_group=unique_name("retraining-service"),
    )
    env = {
        "SAGAZ_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SAGAZ_STORE_URL": f"sqlite:///{tmp_path / 'sagaz.db'}",
        "MODEL_RETRAINING_DRIFT_TOPIC": names.drift_topic,
        "MODEL_RETRAINING_KAFKA_GROUP": names.kafka_group,
    }
    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    async with running_example("examples.model_retraining.main", env) as example:
        await example.wait_for_line("model retraining running 2 triggers")
        for event in readme_events():
            await run_command("examples.model_retraining.send", env, [event])

        async with store:

            async def retrained() -> dict[str, SagaRecord]:
                sagas = await store.list_sagas(saga_name="model-retraining")
                done = {
                    s.context["model_id"]: s
                    for s in sagas
                    if s.status in TERMINAL_SAGA_STATUSES and s.context["reason"] == "drift"
                }
                # the failed one is dead-lettered just after its saga ended
                return done if len(done) == 2 and await store.list_dead_letters() else {}

            await example.wait_until(retrained, "2 finished retrainings", within=30)
            by_model = await retrained()
            steps = {m: await store.get_steps(s.saga_id) for m, s in by_model.items()}
            [dead] = await store.list_dead_letters()
        await example.stop()

    # pricing (0.3) was read before fraud (one partition): skipped, no saga
    assert "model pricing drifted by 0.30, not above 0.50: no retraining" in example.output()
    assert sorted(by_model) == ["churn", "fraud"]

    churn = by_model["churn"]
    assert churn.status is SagaStatus.COMPLETED
    assert churn.context["drift_score"] == 0.8
    # the evaluation read every checkpoint the training streamed, and kept the best one
    assert (churn.context["best_epoch"], churn.context["accuracy"]) == (5, 0.8138)
    assert churn.context["model_version"] == "churn-v1"
    in_order = sorted(steps["churn"], key=lambda step: step.completed_seq or 0)
    assert [(s.name, s.status) for s in in_order] == [
        ("snapshot_dataset", StepStatus.COMPLETED),
        ("train_model", StepStatus.COMPLETED),
        ("evaluate_model", StepStatus.COMPLETED),
        ("register_model", StepStatus.COMPLETED),
    ]
    # ... each as soon as it was written: epoch 1 was validated while training went on
    logged = example.output()
    assert logged.index("model churn: epoch 1 validates") < logged.index("model churn: epoch 5/5")

    fraud = by_model["fraud"]
    assert fraud.status is SagaStatus.COMPENSATED
    assert "best accuracy 0.7847 is below 0.8" in (fraud.error or "")
    assert {s.name: s.status for s in steps["fraud"]} == {
        "snapshot_dataset": StepStatus.COMPENSATED,
        "train_model": StepStatus.COMPLETED,
        "evaluate_model": StepStatus.FAILED,
    }
    assert f"snapshot {fraud.context['snapshot_id']} deleted" in example.output()
    assert (dead.saga_id, dead.trigger_id) == (fraud.saga_id, "model-retraining.on_drift_detected")


async def test_the_daily_schedule_retrains_all_models_at_midnight(tmp_path: Path) -> None:
    from examples.model_retraining.sagas import ModelRetrainingSaga

    # the saga's cron trigger alone (its Kafka trigger is the test above's)
    [daily] = [
        d for d in TriggerRegistry().register_saga(ModelRetrainingSaga) if d.source == "cron"
    ]
    assert daily.source_options.describe()["schedule"] == "@daily"
    clock = FakeClock(datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC))
    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    async with store, TriggerEngine(TriggerConfig(), store, clock=clock, triggers=[daily]):
        await eventually(lambda: clock.sleepers > 0, what="the cron trigger to wait for midnight")
        await clock.advance(29)
        assert await store.list_sagas() == []  # 23:59:59: not yet
        await clock.advance(1)

        async def completed() -> list[SagaRecord]:
            return await store.list_sagas(status=SagaStatus.COMPLETED)

        [saga] = await eventually(completed, what="the nightly retraining to complete")

    assert saga.context["model_id"] == "all"
    assert saga.context["reason"] == "scheduled"
    assert saga.context["scheduled_at"] == "2026-03-02T00:00:00+00:00"
    assert saga.context["model_version"].startswith("all-v")
    assert saga.context["best_epoch"] == 5


async def test_the_adrs_harness_tests_pass_on_the_example() -> None:
    """ADR-025's "Testing Triggered Sagas", on the example's saga: no broker needed."""
    from examples.model_retraining.sagas import ModelRetrainingSaga

    from sagaz.testing import TriggerTestHarness

    async with TriggerTestHarness(ModelRetrainingSaga()) as harness:
        event = DriftEvent(model_id="model-123", score=0.8)
        context = await harness.trigger("on_drift_detected", event)
        assert context is not None
        assert context["model_id"] == "model-123"
        assert context["reason"] == "drift"

        low = DriftEvent(model_id="model-123", score=0.3)
        assert await harness.trigger("on_drift_detected", low) is None  # filtered out

        result = await harness.run("on_drift_detected", event)  # through the pipeline
        assert result is not None and result.status is SagaStatus.COMPLETED
        assert result.context["model_version"].startswith("model-123-v")
