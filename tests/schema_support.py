"""Databases left at an older schema version, as an older sagaz left them (the tests of
``sagaz db upgrade`` and of the stores that refuse to start on them)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

from sagaz.abc import SagaStore
from sagaz.records import SagaRecord
from sagaz.storage import PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.types import SagaStatus

__all__ = ["added_columns", "make_outdated", "rewind_schema"]


async def make_outdated(store: SagaStore, version: int | None = None) -> int:
    """Build, at ``store``'s empty location, the schema of the version before this sagaz's
    (a SQL store: of ``version``, if given), holding one completed saga ``"old"``; return
    that version."""
    if isinstance(store, SQLiteSagaStore):
        from sagaz.storage import sqlite_schema as tables

        conn = sqlite3.connect(store.path, isolation_level=None)
        try:  # the DDL of every migration but the last, as an older sagaz left it
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at)")
            for number, statements in _up_to(tables.MIGRATIONS, version):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, '')", (number,))
            conn.execute(
                "INSERT INTO saga_executions (saga_id, saga_name, status, context, attempt, "
                "created_at, updated_at) VALUES ('old', 'order-saga', 'completed', '{}', 1, "
                "'2024-01-01T00:00:00.000000+00:00', '2024-01-01T00:00:00.000000+00:00')"
            )
        finally:
            conn.close()
        return _up_to(tables.MIGRATIONS, version)[-1][0]
    if isinstance(store, PostgresSagaStore):
        import asyncpg

        from sagaz.storage import postgres_schema as tables

        s = tables.quote_schema(store.schema)
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(f"CREATE TABLE {s}.schema_version (version integer PRIMARY KEY)")
            for number, statements in _up_to(tables.MIGRATIONS, version):
                for statement in statements:
                    await conn.execute(statement.replace("{s}", s))
                await conn.execute(f"INSERT INTO {s}.schema_version VALUES ($1)", number)
            await conn.execute(
                f"INSERT INTO {s}.saga_executions (saga_id, saga_name, status, context, attempt, "
                "created_at, updated_at) VALUES ('old', 'order-saga', 'completed', '{}', 1, "
                "now(), now())"
            )
        finally:
            await conn.close()
        return _up_to(tables.MIGRATIONS, version)[-1][0]
    assert isinstance(store, RedisSagaStore)
    import redis.asyncio as redis

    from sagaz.storage import redis_schema

    async with store:  # the layout has no DDL: a store of this version, its version set back
        await store.create_saga(SagaRecord("old", "order-saga", SagaStatus.COMPLETED, {}))
    client = redis.Redis.from_url(store.url)
    try:
        await client.set(f"{store.prefix}:schema_version", redis_schema.SCHEMA_VERSION - 1)
    finally:
        await client.aclose()
    return redis_schema.SCHEMA_VERSION - 1


def _up_to(
    migrations: Sequence[tuple[int, tuple[str, ...]]], version: int | None
) -> Sequence[tuple[int, tuple[str, ...]]]:
    """The migrations up to ``version`` (``None``: all but the last)."""
    if version is None:
        return migrations[:-1]
    return [(number, statements) for number, statements in migrations if number <= version]


_ADD_COLUMN = re.compile(r"^ALTER TABLE (\S+) ADD COLUMN (?:IF NOT EXISTS )?(\w+) ")


def added_columns(
    migrations: Sequence[tuple[int, Sequence[str]]], version: int
) -> list[tuple[str, str]]:
    """The ``(table, column)`` of the plain ``ADD COLUMN`` statements of the migrations after
    ``version`` (not those a later statement of theirs computes: none is set back so far)."""
    return [
        (match[1], match[2])
        for number, statements in migrations
        if number > version
        for statement in statements
        if (match := _ADD_COLUMN.match(statement)) and "GENERATED" not in statement
    ]


async def rewind_schema(
    store: SagaStore,
    version: int,
    *,
    drop: Sequence[tuple[str, str]] = (),
    redis_keys: Sequence[str] = (),
) -> None:
    """Make ``store``'s (stopped) storage look as a sagaz of schema ``version`` left it: drop
    ``drop`` (``("TABLE", name)`` or ``("INDEX", name)``) from a SQL store, and the columns
    a later migration added (:func:`added_columns`), delete ``redis_keys`` (without the
    prefix) from a Redis one, and set the version back."""
    if isinstance(store, SQLiteSagaStore):
        from sagaz.storage import sqlite_schema

        conn = sqlite3.connect(store.path)
        try:
            for kind, name in drop:
                conn.execute(f"DROP {kind} {name}")
            for table, column in added_columns(sqlite_schema.MIGRATIONS, version):
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
            conn.execute("DELETE FROM schema_version WHERE version > ?", (version,))
            conn.commit()
        finally:
            conn.close()
    elif isinstance(store, PostgresSagaStore):
        import asyncpg

        from sagaz.storage import postgres_schema

        s = f'"{store.schema}"'
        conn = await asyncpg.connect(store.dsn)
        try:
            for kind, name in drop:
                await conn.execute(f"DROP {kind} {s}.{name}")
            for table, column in added_columns(postgres_schema.MIGRATIONS, version):
                await conn.execute(f"ALTER TABLE {table.replace('{s}', s)} DROP COLUMN {column}")
            await conn.execute(f"DELETE FROM {s}.schema_version WHERE version > $1", version)
        finally:
            await conn.close()
    else:
        import redis.asyncio as redis

        assert isinstance(store, RedisSagaStore)
        client = redis.Redis.from_url(store.url)
        try:
            if redis_keys:
                await client.delete(*(f"{store.prefix}:{key}" for key in redis_keys))
            await client.set(f"{store.prefix}:schema_version", version)
        finally:
            await client.aclose()
