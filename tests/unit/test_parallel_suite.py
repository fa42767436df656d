"""The suite runs in parallel (pytest-xdist, ``-n auto --dist loadgroup``: pyproject.toml,
``tests/conftest.py``) and stays as strict as in one process: a missing service still fails
under ``SAGAZ_REQUIRE_SERVICES=1``, and the tests of a group (the chaos suite; the tests of the
built documentation site) run one after the other on one worker.

Each case runs a small suite through pytester, in a subprocess with two xdist workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import conftest
from tests.unit.test_service_markers import project_pytest_options

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An inner suite with this suite's conftest and markers; its subprocess imports ``tests``
    and ``sagaz`` from this checkout."""
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]\n')
    pytester.makeini(project_pytest_options())
    path = os.pathsep.join(
        filter(None, [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH")])
    )
    monkeypatch.setenv("PYTHONPATH", path)
    return pytester


INNER = """
import os
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "workers"


@pytest.fixture
def site():
    return None


@pytest.fixture
def record(request):
    def write(kind):
        OUT.mkdir(exist_ok=True)
        (OUT / request.node.name).write_text(f"{kind} {os.environ['PYTEST_XDIST_WORKER']}")

    return write


def test_needs_redis(redis_url):
    pass
"""

#: each group, as a test joins it: a marker (the chaos suite) or a fixture (the built site)
JOINS = {"chaos": "@pytest.mark.chaos", "mkdocs-site": "@pytest.mark.usefixtures('site')"}


def test_on_two_workers_grouped_tests_share_one_and_a_missing_service_still_fails(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouped tests alternate with plain ones, so load balancing alone would spread them."""
    monkeypatch.setenv("SAGAZ_REQUIRE_SERVICES", "1")
    monkeypatch.setenv("SAGAZ_TEST_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens
    tests = [
        f"{join}\ndef test_{group.replace('-', '_')}_{n}(record):\n    record({group!r})\n\n"
        f"def test_plain_{group.replace('-', '_')}_{n}(record):\n    record('plain')\n"
        for n in range(4)
        for group, join in JOINS.items()
    ]
    suite.makepyfile(test_inner=INNER + "\n\n" + "\n\n".join(tests))
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-v", timeout=120
    )
    result.assert_outcomes(passed=16, errors=1)
    result.stdout.fnmatch_lines(["*Redis is not available*this is a failure, not a skip*"])
    result.stdout.fnmatch_lines(["*PASSED*test_chaos_0@chaos*"])
    ran = [path.read_text().split() for path in (suite.path / "workers").iterdir()]
    workers = {kind: {w for k, w in ran if k == kind} for kind in [*JOINS, "plain"]}
    assert len(workers["chaos"]) == len(workers["mkdocs-site"]) == 1, workers
    assert len(workers["plain"]) == 2, workers  # both workers ran tests: there were two


def test_auto_workers_follow_the_cpus_within_bounds_unless_set(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "7")
    assert conftest.pytest_xdist_auto_num_workers(pytestconfig) == 7
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS")
    for cpus, workers in [(1, 2), (2, 3), (3, 4), (64, conftest.MAX_WORKERS)]:
        monkeypatch.setattr(
            os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)), raising=False
        )
        assert conftest.pytest_xdist_auto_num_workers(pytestconfig) == workers, cpus
