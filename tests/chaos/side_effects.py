"""The side-effect table the chaos app's steps write to (one per test, in PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.chaos.app import STEPS

__all__ = ["SideEffectTable", "StepRuns"]


@dataclass(frozen=True)
class StepRuns:
    """What the steps did, read from the table."""

    rows: int  # distinct (saga_id, step) rows: each step that ran at least once
    runs: int  # step executions in all
    numbers: int  # events n with a row for every step
    repeated: list[tuple[int, str, int]]  # (n, step, attempts) of the steps that ran twice+

    @property
    def repeats(self) -> int:
        """Executions beyond the first, over all steps."""
        return self.runs - self.rows


class SideEffectTable:
    """``(saga_id, step, n, attempts)``; ``attempts`` counts the executions of a step."""

    def __init__(self, conn: Any, name: str, dsn: str) -> None:
        self.conn = conn
        self.name = name
        self.dsn = dsn  # where the app writes it

    async def create(self) -> None:
        await self.conn.execute(
            f'CREATE TABLE "{self.name}" (saga_id text NOT NULL, step text NOT NULL, '
            "n integer NOT NULL, attempts integer NOT NULL, PRIMARY KEY (saga_id, step))"
        )

    async def drop(self) -> None:
        await self.conn.execute(f'DROP TABLE IF EXISTS "{self.name}"')

    async def progress(self) -> int:
        """Sagas whose last step ran (finished or about to)."""
        count = await self.conn.fetchval(
            f'SELECT count(*) FROM "{self.name}" WHERE step = $1', STEPS[-1]
        )
        return int(count)

    async def started(self, step: str) -> list[int]:
        """The events whose ``step`` ran at least once."""
        rows = await self.conn.fetch(f'SELECT n FROM "{self.name}" WHERE step = $1', step)
        return sorted(row["n"] for row in rows)

    async def attempts(self) -> dict[tuple[str, str], int]:
        """How many times each ``(saga_id, step)`` ran so far."""
        rows = await self.conn.fetch(f'SELECT saga_id, step, attempts FROM "{self.name}"')
        return {(row["saga_id"], row["step"]): row["attempts"] for row in rows}

    async def runs(self) -> StepRuns:
        totals = await self.conn.fetchrow(
            f'SELECT count(*) AS rows, coalesce(sum(attempts), 0) AS runs FROM "{self.name}"'
        )
        numbers = await self.conn.fetchval(
            f'SELECT count(*) FROM (SELECT n FROM "{self.name}" GROUP BY n '
            "HAVING count(DISTINCT step) = $1) AS complete",
            len(STEPS),
        )
        repeated = await self.conn.fetch(
            f'SELECT n, step, attempts FROM "{self.name}" WHERE attempts > 1 ORDER BY n, step'
        )
        return StepRuns(
            rows=int(totals["rows"]),
            runs=int(totals["runs"]),
            numbers=int(numbers),
            repeated=[(r["n"], r["step"], r["attempts"]) for r in repeated],
        )
