"""What the group committers of the SQL stores share (:mod:`sagaz.storage.sqlite_groups`,
:mod:`sagaz.storage.postgres_groups`): an operation's outcome and handing it to its caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Outcome", "settle"]

Outcome = tuple[Any, BaseException | None]
"""What one operation gave: ``(result, None)`` or ``(None, error)``."""


def settle(future: asyncio.Future[Any], outcome: Outcome) -> None:
    """Hand an outcome to its caller, unless the caller is gone (cancelled)."""
    if future.done():
        return
    result, error = outcome
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
