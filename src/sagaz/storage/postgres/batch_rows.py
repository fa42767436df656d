"""A batch's rows as one ``jsonb`` parameter, read back as a table.

The batched statements of :class:`~sagaz.storage.postgres.PostgresSagaStore` (inbox claims,
new sagas, checkpoints: see :mod:`sagaz.storage.postgres.group_statement`) write many rows
at once. They took one array parameter per column (``unnest($1::text[], ...)``), and asyncpg
checks every element of an array against three ``collections.abc`` classes before it
encodes it: 60 or so elements per one-step saga, about 5 µs of its client CPU. The rows go
instead as one JSON array of arrays (:func:`rows_param`: one C encoder call), and the SQL
reads it back with :func:`rows_from`, a subquery with the columns ``unnest`` gave.

Timestamps go as ISO 8601 text with their UTC offset (exact to the microsecond, whatever
the session's ``TimeZone`` or ``DateStyle``); a batch formats each distinct moment once (a
saga row holds three, often the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sagaz.storage.codec import plain_json

__all__ = ["rows_from", "rows_param"]

_AS_IS = frozenset({str, int, type(None), bool, float})


def rows_param(rows: Sequence[Sequence[Any]]) -> str:
    """The JSON text of ``rows`` (an array of arrays) for :func:`rows_from`: each value as
    JSON, a ``datetime`` as its ISO text (one ``isoformat`` per distinct moment)."""
    moments: dict[datetime, str] = {}

    def text(moment: Any) -> Any:
        if not isinstance(moment, datetime):
            return moment  # not JSON: plain_json says so (TypeError)
        found = moments.get(moment)
        if found is None:
            found = moments[moment] = moment.isoformat()
        return found

    return plain_json(
        [[value if type(value) in _AS_IS else text(value) for value in row] for row in rows]
    )


def rows_from(param: str, columns: Sequence[tuple[str, str]]) -> str:
    """The rows of the :func:`rows_param` parameter ``param`` (``"$3"``) as the subquery
    ``u``, one column per ``(name, SQL type)`` of ``columns`` in order, and ``n``, the row's
    position (1, 2, ...): what ``unnest(...) WITH ORDINALITY AS u(names..., n)`` gave."""
    selects = ", ".join(
        f"e.r->>{i} AS {name}" if kind == "text" else f"(e.r->>{i})::{kind} AS {name}"
        for i, (name, kind) in enumerate(columns)
    )
    return (
        f"(SELECT {selects}, e.n FROM jsonb_array_elements({param}::jsonb) "
        "WITH ORDINALITY AS e(r, n)) AS u"
    )
