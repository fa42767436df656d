"""pytest plugin (auto-loaded through the ``pytest11`` entry point).

* Isolates the trigger registry per test: whatever a test's saga classes register is forgotten
  after the test, and module-level sagas registered at import stay registered.
* Runs ``async def`` tests in a project that has not configured pytest-asyncio, so the tests
  of the ADR (``async def test_drift_trigger(): ... await harness.trigger(...)``) run as
  written with ``pip install sagaz pytest pytest-asyncio`` and no pytest configuration:
  when pytest-asyncio is installed and its mode is left at its default (``strict``, set
  neither in the configuration nor by ``--asyncio-mode``), an ``async def`` test that no
  async plugin claims (no ``asyncio``, ``anyio`` or ``trio`` marker, no ``anyio_backend``
  fixture) is marked ``pytest.mark.asyncio``. A project that sets ``asyncio_mode`` itself
  (``auto``, or ``strict`` on purpose) is left as it configured it.
* Without pytest-asyncio (not installed, or disabled with ``-p no:asyncio``), runs such an
  unclaimed ``async def`` test itself, in a fresh event loop of its own
  (``asyncio.run``), so ``pip install sagaz pytest`` is enough for the ADR's tests. Only
  the test function is awaited: async fixtures still need an async plugin
  (pytest-asyncio or anyio's).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Generator, Iterator
from typing import Any

import pytest

__all__ = ["sagaz_registry"]

#: markers of the plugins that run coroutine tests (pytest-asyncio, anyio, pytest-trio)
_ASYNC_MARKERS = ("asyncio", "anyio", "trio")


@pytest.fixture(autouse=True)
def sagaz_registry() -> Iterator[object]:
    """The trigger registry, restored to its previous content after the test."""
    from sagaz.triggers.registration import registry

    saved = registry.snapshot()
    try:
        yield registry
    finally:
        registry.restore(saved)


def _marks_async_tests(config: pytest.Config) -> bool:
    """Whether pytest-asyncio runs here in a mode nobody chose (its default, ``strict``)."""
    if not config.pluginmanager.has_plugin("asyncio"):
        return False
    if config.getoption("asyncio_mode", None) is not None:
        return False
    return "asyncio_mode" not in config.inicfg


def _unclaimed_coroutine_test(item: pytest.Function) -> bool:
    if not inspect.iscoroutinefunction(item.obj):
        return False
    if any(item.get_closest_marker(name) is not None for name in _ASYNC_MARKERS):
        return False
    return "anyio_backend" not in item.fixturenames


# Wraps the collection of each test function inside pytest-asyncio's own wrapper (trylast:
# innermost), so the marker is there when pytest-asyncio decides which tests it runs.
@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, None]:
    """Mark the ``async def`` tests no async plugin claims ``asyncio`` (see the module)."""
    outcome = yield
    if not _marks_async_tests(collector.config):
        return
    result = outcome.get_result()
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Function) and _unclaimed_coroutine_test(item):
            item.add_marker(pytest.mark.asyncio)


def _runs_async_tests_itself(config: pytest.Config) -> bool:
    """Whether no pytest-asyncio runs here: sagaz then runs unclaimed ``async def`` tests."""
    return not config.pluginmanager.has_plugin("asyncio")


# tryfirst: before pytest's own implementation, which fails an ``async def`` test
@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test no async plugin claims with ``asyncio.run`` when
    pytest-asyncio is not there (see the module); anything else is left to pytest."""
    if not _runs_async_tests_itself(pyfuncitem.config):
        return None
    if not _unclaimed_coroutine_test(pyfuncitem):
        return None
    parameters = inspect.signature(pyfuncitem.obj).parameters
    funcargs = pyfuncitem.funcargs
    arguments = {name: funcargs[name] for name in parameters if name in funcargs}
    asyncio.run(pyfuncitem.obj(**arguments))
    return True
