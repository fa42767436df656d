"""ADR-025 "Testing Triggered Sagas": the ADR's ``test_sagas.py``, as written.

The module holds what that file needs and the ADR leaves undefined, ``DriftEvent`` and the
§1 ``ModelRetrainingSaga`` (as written), then the file's two tests, collected by this suite.
A user runs that file with a plain ``pytest`` (whatever their asyncio configuration), so
:func:`test_the_adrs_test_sagas_py_passes_under_a_plain_pytest` writes it out and runs it in a
pytest of its own, without this repository's ``asyncio_mode = "auto"``.
"""

from __future__ import annotations

import inspect
import textwrap

import pytest
from pydantic import BaseModel

from sagaz import Saga, action, trigger


class DriftEvent(BaseModel):
    """Left undefined by the ADR: a drift report of one model."""

    model_id: str
    score: float


# -- ADR-025 §1, as written ----------------------------------------------------------------
# fmt: off
class ModelRetrainingSaga(Saga):
    saga_name = "model-retraining"

    @trigger(source="kafka", topic="model.drift")
    def on_drift_detected(self, event: DriftEvent):
        # Transform event -> context
        if event.score > 0.5:
            return {"model_id": event.model_id, "reason": "drift"}
        return None # Skip execution

    @trigger(source="cron", schedule="@daily")
    def on_daily_schedule(self, tick):
        return {"model_id": "all", "reason": "scheduled"}

    @action("train_model")
    async def train(self, ctx):
        ...
# fmt: on
# -------------------------------------------------------------------------------------------

# -- ADR-025 "Testing Triggered Sagas", as written -----------------------------------------
# fmt: off
# test_sagas.py
from sagaz.testing import TriggerTestHarness  # noqa: E402


async def test_drift_trigger():
    saga = ModelRetrainingSaga()
    harness = TriggerTestHarness(saga)

    # Simulate event
    event = DriftEvent(model_id="model-123", score=0.8)
    context = await harness.trigger("on_drift_detected", event)

    assert context["model_id"] == "model-123"
    assert context["reason"] == "drift"

async def test_trigger_filtering():
    saga = ModelRetrainingSaga()
    harness = TriggerTestHarness(saga)

    # Low score - should be filtered
    event = DriftEvent(model_id="model-123", score=0.3)
    context = await harness.trigger("on_drift_detected", event)

    assert context is None  # Filtered out
# fmt: on
# -------------------------------------------------------------------------------------------


def adr_test_file() -> str:
    """The ADR's ``test_sagas.py`` with the definitions it needs, as a user would write it."""
    parts = [
        "from pydantic import BaseModel\n\nfrom sagaz import Saga, action, trigger\n",
        inspect.getsource(DriftEvent),
        inspect.getsource(ModelRetrainingSaga),
        "from sagaz.testing import TriggerTestHarness\n",
        inspect.getsource(test_drift_trigger),
        inspect.getsource(test_trigger_filtering),
    ]
    return "\n\n".join(textwrap.dedent(part) for part in parts)


@pytest.mark.parametrize(
    "plugins",
    [
        pytest.param([], id="pytest-asyncio installed, not configured"),
        pytest.param(["-p", "no:asyncio"], id="without pytest-asyncio"),
    ],
)
def test_the_adrs_test_sagas_py_passes_under_a_plain_pytest(
    pytester: pytest.Pytester, plugins: list[str]
) -> None:
    pytester.makepyfile(test_sagas=adr_test_file())
    pytester.syspathinsert()  # the test file's directory, as pytest's rootdir would be
    result = pytester.runpytest_subprocess(*plugins, "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)
