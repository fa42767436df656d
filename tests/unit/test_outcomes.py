"""What ``TriggerEngine.wait_for`` answers from the outcomes the engine keeps."""

from __future__ import annotations

import gc

from sagaz.engine.outcomes import SagaOutcomes
from sagaz.events import NotRun
from sagaz.saga.result import SagaResult
from sagaz.types import SagaStatus


async def test_a_kept_result_is_answered_equal_and_as_a_private_copy() -> None:
    outcomes = SagaOutcomes()
    result = SagaResult(
        "s1",
        SagaStatus.FAILED,
        {"order": {"lines": [1, 2]}},
        error="boom",
        failed_step="pay",
        compensation_errors={"reserve": "gone"},
        attempt=2,
    )
    outcomes.settle("s1", result)
    answered = await outcomes.wait("s1")
    assert answered == result
    assert answered.status is SagaStatus.FAILED
    answered.context["order"]["lines"].append(3)  # type: ignore[union-attr]
    assert (await outcomes.wait("s1")).context == {"order": {"lines": [1, 2]}}


async def test_not_run_outcomes_are_kept_as_they_are() -> None:
    outcomes = SagaOutcomes()
    outcomes.settle("s1", NotRun("s1", "interrupted"))
    assert await outcomes.wait("s1") == NotRun("s1", "interrupted")


def test_kept_results_leave_the_garbage_collectors_lists() -> None:
    # a kept SagaResult object stayed tracked, lived through `keep` events and was promoted
    # to the oldest generation, bringing full collections on sooner
    outcomes = SagaOutcomes(keep=1000)
    for n in range(1000):
        outcomes.settle(str(n), SagaResult(str(n), SagaStatus.COMPLETED, {"n": n, "m": {}}))
    gc.collect()
    assert not any(gc.is_tracked(kept) for kept in outcomes._recent.values())
