"""``PgGroupCommitter.run`` refuses an operation it could not run, and starts one flusher for
the operations queued at once (the group commit itself is covered against a real server by
``tests/integration/test_postgres_group_commit.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaz.storage.postgres_groups import PgGroupCommitter


async def test_an_operation_without_a_function_or_a_batch_is_refused_at_once() -> None:
    groups = PgGroupCommitter(None, unavailable=lambda exc: False, label="PostgreSQL store")
    with pytest.raises(TypeError, match="give an operation, a batch, or both"):
        groups.run(None)
    await groups.close()  # nothing was queued: no flusher to wait for


class _Pool:
    """A pool whose connection runs nothing: the operations below do not touch it."""

    def acquire(self) -> _Pool:
        return self

    async def __aenter__(self) -> object:
        return object()

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_operations_queued_at_once_start_one_flusher_and_share_its_group() -> None:
    groups = PgGroupCommitter(
        _Pool(), unavailable=lambda exc: False, label="PostgreSQL store", connections=4
    )
    groups._transaction = _no_transaction  # type: ignore[method-assign]

    async def op(conn: object, n: int) -> int:
        return n * 10

    futures = [groups.run(op, n) for n in range(10)]
    # one flusher takes them all: the others would only find the queue empty
    assert len(groups._flushers) == 1
    assert await asyncio.gather(*futures) == [n * 10 for n in range(10)]
    assert groups.commits == 1
    # once it has taken the queue, what comes next gets a flusher of its own
    assert await groups.run(op, 5) == 50
    assert groups.commits == 2
    await groups.close()


async def _no_transaction(conn: object, group: list[Any]) -> list[tuple[Any, None]]:
    """The committer's transaction without a server: each operation run, nothing to commit."""
    return [(await queued.call(conn), None) for queued in group]
