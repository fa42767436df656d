"""The shared store for many processes: PostgreSQL through an asyncpg pool.

>>> store = PostgresSagaStore("postgresql://app@db/app", schema="sagaz")  # doctest: +SKIP
>>> async with store: ...  # doctest: +SKIP

Every claim is one atomic statement (``INSERT ... ON CONFLICT``, ``UPDATE ... WHERE lease expired
RETURNING``), so any number of processes can share the schema. Contexts and payloads are JSONB;
bytes and datetimes inside them round-trip through :mod:`sagaz.storage.codec`. asyncpg is
imported when the store starts (``pip install "sagaz[postgres]"``).
"""

from __future__ import annotations

from sagaz.storage.postgres.store import PostgresSagaStore

__all__ = ["PostgresSagaStore"]
