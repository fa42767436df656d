"""PostgreSQL fixtures beyond the shared server's ``postgres_dsn`` (``tests/conftest.py``).

``private_postgres`` is a cluster of the test's own, which it may stop and start again
(:class:`tests.private_servers.PrivatePostgres`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.private_servers import PrivatePostgres, postgres_binaries
from tests.services import require_marker, require_service

__all__ = ["private_postgres"]


@pytest.fixture
async def private_postgres(request: pytest.FixtureRequest) -> AsyncIterator[PrivatePostgres]:
    """A running PostgreSQL of this test's own (``.url``); removed afterwards."""
    require_marker(request)
    binaries = postgres_binaries()
    require_service(
        "PostgreSQL binaries (initdb, pg_ctl)",
        binaries is not None,
        "a private cluster needs the server package (postgresql) or SAGAZ_TEST_PG_BINDIR",
    )
    assert binaries is not None
    server = PrivatePostgres(binaries)
    try:
        await server.start()
        yield server
    finally:
        await server.close()
