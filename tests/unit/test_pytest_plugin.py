"""The sagaz pytest plugin in a fresh project: the ADR's ``test_sagas.py`` runs as written with
``sagaz``, ``pytest`` and ``pytest-asyncio`` installed and no pytest configuration, and with
``sagaz`` and ``pytest`` alone (the plugin runs the tests itself); a project that configures
its async tests itself is left as it is."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# The projects run in this process (pytester's default: fast), under this suite's
# filterwarnings=error; pytest-asyncio warns a project that has no configuration about it.
pytestmark = pytest.mark.filterwarnings(
    'ignore:The configuration option "asyncio_default_fixture_loop_scope" is unset'
)

# the ADR's saga (its "The @trigger Decorator" section) with the event type it implies
SAGAS = """
    from pydantic import BaseModel
    from sagaz import Saga, action, trigger


    class DriftEvent(BaseModel):
        model_id: str
        score: float


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
"""

# the ADR's "Testing Triggered Sagas" section, verbatim but for the import of its saga
TEST_SAGAS = """
    # test_sagas.py
    from sagaz.testing import TriggerTestHarness

    from sagas import DriftEvent, ModelRetrainingSaga

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
"""


def adr_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(sagas=textwrap.dedent(SAGAS), test_sagas=textwrap.dedent(TEST_SAGAS))


def test_the_adr_tests_run_in_a_project_without_configuration(pytester: pytest.Pytester) -> None:
    adr_project(pytester)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_without_the_plugin_they_would_not_run(pytester: pytest.Pytester) -> None:
    adr_project(pytester)  # what the plugin fixes: pytest-asyncio's strict default
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:sagaz")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*async def functions are not natively supported*"])


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_a_project_that_sets_the_mode_keeps_it(pytester: pytest.Pytester, mode: str) -> None:
    adr_project(pytester)
    pytester.makeini(f"[pytest]\nasyncio_mode = {mode}\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    if mode == "auto":
        result.assert_outcomes(passed=2)
    else:  # strict on purpose: only marked tests are pytest-asyncio's
        result.assert_outcomes(failed=2)


def test_anyio_tests_stay_with_anyio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_anyio="""
        import pytest
        from pytest_asyncio.plugin import PytestAsyncioFunction


        @pytest.fixture
        def anyio_backend():
            return "asyncio"


        @pytest.mark.anyio
        async def test_marked(request):
            assert not isinstance(request.node, PytestAsyncioFunction)


        async def test_with_the_backend_fixture(anyio_backend, request):
            assert not isinstance(request.node, PytestAsyncioFunction)


        async def test_unmarked(request):
            assert isinstance(request.node, PytestAsyncioFunction)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


# -- without pytest-asyncio: the plugin runs unclaimed async tests itself ------------------
NO_ASYNCIO = ("-p", "no:cacheprovider", "-p", "no:asyncio")


def test_without_pytest_asyncio_the_adr_tests_run(pytester: pytest.Pytester) -> None:
    adr_project(pytester)
    result = pytester.runpytest(*NO_ASYNCIO)
    result.assert_outcomes(passed=2)


def test_without_pytest_asyncio_a_failing_async_test_fails(pytester: pytest.Pytester) -> None:
    """The coroutine is awaited: its assertion counts, with fixtures passed in."""
    pytester.makepyfile(
        test_async="""
        import asyncio

        import pytest


        @pytest.fixture
        def answer():
            return 42


        async def test_fails(answer):
            await asyncio.sleep(0)
            assert answer == 41


        async def test_passes(answer, tmp_path):
            await asyncio.sleep(0)
            assert answer == 42 and tmp_path.is_dir()


        @pytest.mark.parametrize("n", [1, 2])
        async def test_parametrized(n):
            assert asyncio.get_running_loop() is not None and n in (1, 2)
        """
    )
    result = pytester.runpytest(*NO_ASYNCIO)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*assert 42 == 41*"])


def test_without_pytest_asyncio_and_without_the_plugin_they_would_not_run(
    pytester: pytest.Pytester,
) -> None:
    adr_project(pytester)
    result = pytester.runpytest(*NO_ASYNCIO, "-p", "no:sagaz")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*async def functions are not natively supported*"])


def test_without_pytest_asyncio_anyio_tests_stay_with_anyio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_anyio="""
        import pytest
        import sniffio


        @pytest.fixture(params=["asyncio"])
        def anyio_backend(request):
            return request.param


        @pytest.mark.anyio
        async def test_marked():
            assert sniffio.current_async_library() == "asyncio"
        """
    )
    result = pytester.runpytest(*NO_ASYNCIO)
    result.assert_outcomes(passed=1)
