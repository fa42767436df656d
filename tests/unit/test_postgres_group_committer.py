"""``PgGroupCommitter.run`` refuses an operation it could not run (the group commit itself is
covered against a real server by ``tests/integration/test_postgres_group_commit.py``)."""

from __future__ import annotations

import pytest

from sagaz.storage.postgres_groups import PgGroupCommitter


async def test_an_operation_without_a_function_or_a_batch_is_refused_at_once() -> None:
    groups = PgGroupCommitter(None, unavailable=lambda exc: False, label="PostgreSQL store")
    with pytest.raises(TypeError, match="give an operation, a batch, or both"):
        groups.run(None)
    await groups.close()  # nothing was queued: no flusher to wait for
