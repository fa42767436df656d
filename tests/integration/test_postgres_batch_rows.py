"""A PostgreSQL batch's rows as one ``jsonb`` parameter (``storage/postgres/batch_rows.py``):
the server reads back every value as it was given (text of any kind, integers, NULLs, moments
in any zone to the microsecond), in order, whatever the session's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from sagaz.storage.postgres.batch_rows import rows_from, rows_param

pytestmark = pytest.mark.postgres

_COLUMNS = (("name", "text"), ("count", "int"), ("moment", "timestamptz"), ("doc", "jsonb"))

_ROWS: list[tuple[Any, ...]] = [
    ("plain", 1, datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=UTC), '{"id":1}'),
    (
        'quotes " and \\ backslash, é ☃ 𝄞, tab\t newline\n',
        -(2**31),
        datetime(1999, 1, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        '{"s":"a \\"quoted\\" \\u00e9 text","n":[1,2.5,null]}',
    ),
    (None, None, None, None),
    ("", 2**31 - 1, datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=UTC), "[]"),
]


async def test_the_rows_come_back_as_they_were_given_in_order(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("SET TIME ZONE 'Asia/Kathmandu'")  # not UTC, a :45 offset
        rows = await conn.fetch(
            f"SELECT u.name, u.count, u.moment, u.doc::text AS doc, u.n "
            f"FROM {rows_from('$1', _COLUMNS)} ORDER BY u.n",
            rows_param(_ROWS),
        )
    finally:
        await conn.close()
    assert [row["n"] for row in rows] == [1, 2, 3, 4]
    for row, given in zip(rows, _ROWS, strict=True):
        name, count, moment, doc = given
        assert row["name"] == name
        assert row["count"] == count
        assert row["moment"] == moment  # the same instant, to the microsecond
        if doc is None:
            assert row["doc"] is None
        else:  # jsonb normalises spacing: compare the values
            assert await _same_json(postgres_dsn, row["doc"], doc)


async def _same_json(dsn: str, stored: str, given: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT $1::text::jsonb = $2::text::jsonb", stored, given))
    finally:
        await conn.close()


def test_each_distinct_moment_is_written_once_as_iso_text() -> None:
    moment = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    text = rows_param([("a", moment, moment), ("b", moment, None)])
    assert text == (
        '[["a","2026-12-05T12:00:00+00:00","2026-12-05T12:00:00+00:00"],'
        '["b","2026-12-05T12:00:00+00:00",null]]'
    )


def test_a_value_json_cannot_hold_is_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        rows_param([("a", object())])
