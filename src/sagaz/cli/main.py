"""``sagaz`` command line.

* ``sagaz run MODULE... [--progress]`` — import the modules (registering their triggers) and
  run the engine until SIGINT/SIGTERM, then stop gracefully; ``--progress`` shows received /
  running / completed / dead-lettered.
* ``sagaz triggers list [MODULE...]`` — the triggers and whether each is running or paused:
  those the store knows (an engine records its triggers when it starts), or with modules,
  those the modules register (source and options too).
* ``sagaz triggers pause ID`` / ``sagaz triggers resume ID`` — pause or resume a trigger in
  the store; every engine on it follows within ``trigger_state_interval_seconds``.
* ``sagaz triggers run ID --modules M...`` — fire a cron or poll trigger now, once, here, and
  wait for its saga; ``sagaz triggers backfill ID --from T --to T --modules M...`` — run each
  tick of a cron trigger in that window that has no saga yet (repeating it starts nothing).
* ``sagaz sagas list [--status S] [--saga NAME] [--trigger ID] [--older-than AGE]
  [--newer-than AGE] [--limit N] [--after SAGA_ID]`` — sagas, newest first, a page at a time.
* ``sagaz sagas show SAGA_ID`` — one saga: which step failed, what was compensated, every
  step with its status, attempts, timing and error, and the context.
* ``sagaz dlq list|show ID|replay ID|purge`` — dead letters in the store. ``replay`` imports
  the saga's module stored with the dead letter (``--modules`` names others) and runs the
  event again as its source delivered it, as a new attempt of the same saga.
* ``sagaz db upgrade|status`` — the store's schema: a store creates it on an empty database,
  but an older one is migrated only by ``sagaz db upgrade`` (a store refuses to start on it).
* ``sagaz ui [MODULE...] [--host H] [--port P] [--token T]`` — the dashboard for the store at
  ``http://H:P/sagaz`` (triggers, sagas, dead letters of every engine on it).
* ``sagaz --version`` — the installed version.

The store is ``--store URL`` (before or after the subcommand), else ``SAGAZ_STORE_URL``, else
``sqlite:///sagaz.db``. Listing and show commands print aligned tables with a header row, or
JSON with ``--json``.

Exit status: 0 done; 1 the operation failed (the store is unreachable or its schema outdated,
a replayed saga failed again, ``db status`` found a schema to upgrade); 2 a usage mistake (an
unknown command or option, a bad store URL, an unknown saga or dead-letter id, a module that
does not import). A mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from sagaz import __version__
from sagaz.cli import db, dlq, run, sagas, triggers, ui
from sagaz.cli.exits import EXIT_STATUSES, FAILED, USAGE, CommandError
from sagaz.cli.store import STORE_HELP, store_options
from sagaz.exceptions import (
    ConfigurationError,
    DeadLetterReplayError,
    MissingExtraError,
    SagaDefinitionError,
    SagazError,
    TriggerDefinitionError,
)

__all__ = ["build_parser", "main"]

#: errors that mean the command line (or the code it names) is wrong: exit status 2
_USAGE_ERRORS = (
    ConfigurationError,
    MissingExtraError,
    DeadLetterReplayError,
    TriggerDefinitionError,
    SagaDefinitionError,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sagaz`` command."""
    parser = argparse.ArgumentParser(
        prog="sagaz",
        description="sagaz command line: run the engine, inspect sagas, triggers and dead "
        "letters, upgrade the store's schema.",
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("--version", action="version", version=f"sagaz {__version__}")
    parser.add_argument("--store", metavar="URL", help=STORE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [store_options()]
    for module in (run, triggers, sagas, dlq, db, ui):
        module.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sagaz`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = asyncio.run(args.handler(args))
    except CommandError as exc:
        return _fail(str(exc), exc.status)
    except _USAGE_ERRORS as exc:
        return _fail(str(exc), USAGE)
    except SagazError as exc:  # the store is unreachable, its schema outdated...
        return _fail(str(exc), FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return status


def _fail(message: str, status: int) -> int:
    print(f"sagaz: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
