"""pytest plugin (auto-loaded through the ``pytest11`` entry point).

Isolates the trigger registry per test: whatever a test's saga classes register is forgotten
after the test, and module-level sagas registered at import stay registered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

__all__ = ["sagaz_registry"]


@pytest.fixture(autouse=True)
def sagaz_registry() -> Iterator[object]:
    """The trigger registry, restored to its previous content after the test."""
    from sagaz.triggers.registration import registry

    saved = registry.snapshot()
    try:
        yield registry
    finally:
        registry.restore(saved)
