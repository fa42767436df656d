"""``quick_init``: the frozen results made per event keep every behaviour of a dataclass."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest

from sagaz._frozen import quick_init
from sagaz.events import AdmissionOutcome, AdmissionResult
from sagaz.saga.result import SagaResult
from sagaz.types import SagaStatus


@pytest.mark.parametrize("cls", [AdmissionResult, SagaResult])
def test_the_results_set_their_slots_directly_with_the_dataclass_signature(cls: type) -> None:
    assert cls.__init__.__globals__.get("_FACTORY") is not None  # not dataclasses' own
    params = inspect.signature(cls).parameters
    assert list(params) == [f.name for f in dataclasses.fields(cls)]


def test_a_result_is_equal_frozen_hashable_and_copied_like_a_dataclass() -> None:
    result = SagaResult("s-1", SagaStatus.COMPLETED, {"n": 1}, attempt=2)
    assert result == SagaResult("s-1", SagaStatus.COMPLETED, {"n": 1}, attempt=2)
    assert (result.error, result.failed_step, result.compensation_errors) == (None, None, {})
    # a factory default is a new object per instance
    assert (
        result.compensation_errors is not SagaResult("s", SagaStatus.FAILED, {}).compensation_errors
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.attempt = 3  # type: ignore[misc]
    assert dataclasses.replace(result, error="boom").error == "boom"
    assert pickle.loads(pickle.dumps(result)) == result
    accepted = AdmissionResult(AdmissionOutcome.ACCEPTED, "s-1")
    assert hash(accepted) == hash(AdmissionResult(AdmissionOutcome.ACCEPTED, "s-1"))
    assert accepted.accepted and accepted.reason is None and accepted.details is None


def test_only_a_frozen_slotted_dataclass_without_post_init_is_taken() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Checked):
        with pytest.raises(TypeError):
            quick_init(cls)
