"""The service markers cannot drift: ``-m "not integration"`` needs no service, and
``-m integration`` selects every test that talks to one (``tests/services.py``).

Each case runs a small suite through pytester with this suite's conftest, its service
fixtures' session halves replaced by fakes, so nothing here needs a service.
"""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

CONFTEST = textwrap.dedent(
    """
    import pytest

    pytest_plugins = ["tests.conftest"]


    @pytest.fixture(scope="session")
    def _postgres_dsn():
        return "postgresql://fake"


    @pytest.fixture(scope="session")
    def _redis_url():
        return "redis://fake"


    @pytest.fixture(scope="session")
    def _kafka_bootstrap():
        return "fake:9092"
    """
)

ROOT = Path(__file__).resolve().parents[2]


#: options of ``addopts`` the inner runs leave out, with the number of values each takes:
#: they run in this process, not on xdist workers of their own
NOT_INNER = {"-n": 1, "--dist": 1}


def project_pytest_options() -> str:
    """This project's ``[tool.pytest.ini_options]`` (markers, ``--strict-markers``...), as an
    ini file for the inner runs."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    lines = ["[pytest]"]
    for name, value in options["ini_options"].items():
        if name == "testpaths":
            continue
        if name == "addopts":
            value = _without_xdist(value)
        if isinstance(value, list):
            lines.append(f"{name} =")
            lines.extend(f"    {item}" for item in value)
        else:
            lines.append(f"{name} = {value}")
    return "\n".join(lines)


def _without_xdist(addopts: list[str]) -> list[str]:
    kept: list[str] = []
    skip = 0
    for option in addopts:
        if skip:
            skip -= 1
        elif option in NOT_INNER:
            skip = NOT_INNER[option]
        else:
            kept.append(option)
    return kept


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the inner suite in this process (without the plugins that only slow it down)."""
    return suite.runpytest("-p", "no:hypothesispytest", "-p", "no:benchmark", *args)


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(project_pytest_options())
    return pytester


def test_a_test_requesting_a_service_fixture_gets_the_service_and_integration_markers(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_mixed="""
        import pytest

        @pytest.fixture
        def topic(kafka_bootstrap):  # a service reached through another fixture counts too
            return kafka_bootstrap + "/orders"

        def test_redis(redis_url):
            assert redis_url == "redis://fake"

        def test_kafka(topic):
            assert topic == "fake:9092/orders"

        def test_pure():
            pass
        """
    )
    run(suite, "-m", "integration").assert_outcomes(passed=2, deselected=1)
    run(suite, "-m", "not integration").assert_outcomes(passed=1, deselected=2)
    run(suite, "-m", "kafka").assert_outcomes(passed=1, deselected=2)


def test_reaching_a_service_through_getfixturevalue_unmarked_fails_and_names_the_fix(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_dynamic="""
        import pytest

        @pytest.fixture(params=["sqlite", "postgres"])
        def database(request):
            if request.param == "postgres":
                return request.getfixturevalue("postgres_dsn")
            return "sqlite://"

        def test_store(database):
            assert database
        """
    )
    result = run(suite, "-m", "not integration")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*test_store?postgres? reaches postgres_dsn but is not marked `postgres`*"]
    )


def test_a_param_marked_with_its_service_reaches_it_and_counts_as_integration(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_dynamic="""
        import pytest

        from tests.services import backend_params

        @pytest.fixture(params=backend_params("sqlite", "postgres"))
        def database(request):
            if request.param == "postgres":
                return request.getfixturevalue("postgres_dsn")
            return "sqlite://"

        def test_store(database):
            assert database
        """
    )
    run(suite, "-m", "not integration").assert_outcomes(passed=1, deselected=1)
    run(suite, "-m", "integration and postgres").assert_outcomes(passed=1, deselected=1)


def test_integration_set_by_hand_without_a_service_is_refused(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_by_hand="""
        import pytest

        @pytest.mark.integration
        def test_talks_to_nothing():
            pass
        """
    )
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mark the service these tests talk to instead*"])


def test_an_unregistered_marker_is_an_error(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.postgress
        def test_typo():
            pass
        """
    )
    result = run(suite)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'postgress' not found in `markers` configuration option*"])
