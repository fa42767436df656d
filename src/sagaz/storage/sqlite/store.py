"""The SQLiteSagaStore: its parts composed into one class."""

from __future__ import annotations

from sagaz.storage.sqlite.batches import run_together
from sagaz.storage.sqlite.control import SQLiteControl
from sagaz.storage.sqlite.inbox import SQLiteInbox
from sagaz.storage.sqlite.leases import SQLiteLeases
from sagaz.storage.sqlite.outbox import SQLiteOutbox
from sagaz.storage.sqlite.retention import SQLiteRetention
from sagaz.storage.sqlite.sagas import SQLiteSagas
from sagaz.storage.sqlite.triggers import SQLiteTriggers
from sagaz.storage.sqlite_groups import Together

__all__ = ["SQLiteSagaStore"]


class SQLiteSagaStore(
    SQLiteSagas,
    SQLiteInbox,
    SQLiteOutbox,
    SQLiteTriggers,
    SQLiteLeases,
    SQLiteControl,
    SQLiteRetention,
):
    """A :class:`~sagaz.abc.SagaStore` in one SQLite file (the embedded default).

    ``path_or_url`` is a file path or a ``sqlite:///relative.db`` / ``sqlite:////abs/path.db``
    URL. ``busy_timeout`` is how long a write waits for another process's write lock.
    """

    def _together(self) -> Together:
        return run_together
