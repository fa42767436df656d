"""The PostgresSagaStore: its parts composed into one class."""

from __future__ import annotations

from sagaz.storage.postgres.control import PostgresControl
from sagaz.storage.postgres.group_statement import PostgresGroupStatement
from sagaz.storage.postgres.inbox import PostgresInbox
from sagaz.storage.postgres.leases import PostgresLeases
from sagaz.storage.postgres.lists import PostgresSagaLists
from sagaz.storage.postgres.outbox import PostgresOutbox
from sagaz.storage.postgres.recoveries import PostgresRecoveries
from sagaz.storage.postgres.retention import PostgresRetention
from sagaz.storage.postgres.sagas import PostgresSagas
from sagaz.storage.postgres.triggers import PostgresTriggers
from sagaz.storage.unavailable import raises_unavailable

__all__ = ["PostgresSagaStore"]


@raises_unavailable
class PostgresSagaStore(
    PostgresGroupStatement,
    PostgresSagas,
    PostgresSagaLists,
    PostgresRecoveries,
    PostgresInbox,
    PostgresOutbox,
    PostgresTriggers,
    PostgresLeases,
    PostgresControl,
    PostgresRetention,
):
    """A :class:`~sagaz.abc.SagaStore` in PostgreSQL, shared by every instance of an app.

    ``schema`` names the PostgreSQL schema that holds the tables (created at ``start()``);
    ``min_size``/``max_size`` bound the asyncpg connection pool. A lost server (restarted,
    unreachable) makes operations raise :class:`~sagaz.exceptions.StoreUnavailableError`; the
    pool replaces its broken connections, so the store works again once the server is back.
    ``idle_transaction_timeout`` (seconds, ``None``: the server's setting) ends a session of
    the pool left idle in a transaction that long (a worker frozen or cut off in the middle
    of one), which releases the rows it locked: other workers' writes wait on them until then.
    """
