"""Importing the user's modules, which registers their ``@trigger`` methods."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from sagaz.cli.exits import CommandError

__all__ = ["import_modules"]


def import_modules(modules: Sequence[str]) -> None:
    """Import ``modules`` (dotted names, found from the working directory too); one that
    does not import is a usage error naming it."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CommandError(
                f"cannot import {name!r}: {exc}; pass the dotted module name (myapp.sagas) "
                "and run sagaz from the directory that holds the package"
            ) from exc
