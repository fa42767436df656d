"""The exit statuses of the ``sagaz`` command, and the error that ends a command with one.

* ``0`` (:data:`OK`): done.
* ``1`` (:data:`FAILED`): the command was right but the operation failed: the store is
  unreachable or its schema outdated (``sagaz db upgrade``), a replayed saga failed again,
  ``db status`` found a schema to upgrade.
* ``2`` (:data:`USAGE`): the command was wrong: an unknown command or option, a bad store URL,
  a saga or dead-letter id that does not exist, a module that does not import.
"""

from __future__ import annotations

__all__ = ["EXIT_STATUSES", "FAILED", "OK", "USAGE", "CommandError"]

OK = 0
FAILED = 1
USAGE = 2

EXIT_STATUSES = (
    "exit status: 0 done; 1 the operation failed (store unreachable, schema outdated, a "
    "replay failed again); 2 a usage mistake (unknown option, bad store URL, unknown id)"
)
"""One line for ``sagaz --help``."""


class CommandError(Exception):
    """Ends a command with ``message`` on stderr (one line, no traceback) and ``status``."""

    def __init__(self, message: str, status: int = USAGE) -> None:
        super().__init__(message)
        self.status = status
