"""How the ``sagaz`` command prints: aligned tables with a header row, ``--json`` documents,
timestamps and short texts."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["clip", "jsonable", "moment", "print_json", "print_table", "say"]


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str, out: TextIO | None = None
) -> None:
    """``rows`` under ``headers``, each column as wide as its widest cell (``None`` is ``-``).

    With no rows, nothing goes to stdout and ``empty`` goes to stderr, so a script reading
    stdout sees no rows and a person sees why.
    """
    if not rows:
        say(empty)
        return
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    stream = out or sys.stdout
    for row in cells:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(line.rstrip(), file=stream)


def print_json(document: Any, *, out: TextIO | None = None) -> None:
    """``document`` as indented JSON (bytes and datetimes as :func:`jsonable` writes them)."""
    print(json.dumps(document, indent=2, default=jsonable), file=out or sys.stdout)


def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: bytes say they are bytes (as text where they are UTF-8),
    datetimes are ISO 8601, anything else its ``repr``."""
    if isinstance(value, bytes):
        try:
            return {"bytes": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"bytes_base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def moment(value: datetime | None) -> str | None:
    """A timestamp for a table: UTC, to the second (``2024-05-01 12:00:03Z``)."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clip(text: str | None, width: int = 60) -> str | None:
    """The first line of ``text``, cut to ``width`` characters (``…`` marks a cut)."""
    if not text:
        return None
    lines = text.strip().splitlines() or [""]
    line = lines[0]
    if len(line) > width:
        return line[: width - 1] + "…"
    return line + (" …" if len(lines) > 1 else "")


def say(message: str) -> None:
    """A note for the person at the terminal (stderr: stdout stays for data)."""
    print(message, file=sys.stderr)
