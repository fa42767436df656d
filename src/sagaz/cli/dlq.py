"""``sagaz dlq list|show ID|replay ID|purge``: the dead letters in the store.

``replay`` imports the saga's module stored with the dead letter (``--modules`` names others)
and runs the event again as its source delivered it, as a new attempt of the same saga: exit
status 0 once the event is settled (the dead letter is gone), 1 when it failed again (a new
dead letter replaces it), 2 when nothing could be run.
"""

from __future__ import annotations

import argparse
from typing import Any

from sagaz.abc import SagaStore
from sagaz.cli.exits import FAILED, OK, CommandError
from sagaz.cli.output import clip, moment, print_json, print_table
from sagaz.cli.sagas import parse_age
from sagaz.cli.store import opened_store, store_url
from sagaz.records import DeadLetterRecord

__all__ = ["add_commands"]


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``dlq list|show|replay|purge``."""
    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay, purge")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=common, help="dead letters, oldest first")
    listing.add_argument("--trigger", metavar="TRIGGER_ID", help="only this trigger's")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    listing.set_defaults(handler=list_dead_letters)

    show = actions.add_parser("show", parents=common, help="one dead letter in full")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    show.set_defaults(handler=show_dead_letter)

    replay = actions.add_parser(
        "replay",
        parents=common,
        help="run the event again as a new attempt of the same saga",
        description="Exit status 0: settled, the dead letter is gone; 1: it failed again (a "
        "new dead letter replaces it); 2: nothing could be run.",
    )
    replay.add_argument("id", type=int, metavar="ID")
    replay.add_argument(
        "--modules",
        nargs="*",
        default=[],
        metavar="MODULE",
        help="modules (or .py files) that define the saga; by default the module stored "
        "with the dead letter",
    )
    replay.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the saga (60)"
    )
    replay.set_defaults(handler=replay_dead_letter)

    purge = actions.add_parser("purge", parents=common, help="delete dead letters")
    purge.add_argument("--trigger", metavar="TRIGGER_ID", help="only this trigger's")
    purge.add_argument(
        "--older-than",
        type=parse_age,
        metavar="AGE",
        help="only those stored before: an age (90s, 15m, 2h, 7d, 1w) or an ISO 8601 timestamp",
    )
    purge.set_defaults(handler=purge_dead_letters)


def _document(record: DeadLetterRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "trigger_id": record.trigger_id,
        "saga_name": record.saga_name,
        "saga_id": record.saga_id,
        "source": record.source,
        "reason": record.reason,
        "attempts": record.attempts,
        "created_at": record.created_at,
        "error": record.error,
        "payload": record.payload,
        "meta": record.meta,
        "traceback": record.traceback,
    }


async def list_dead_letters(args: argparse.Namespace) -> int:
    """Print the dead letters, oldest first."""
    async with opened_store(args) as store:
        found = await store.list_dead_letters(trigger_id=args.trigger, limit=args.limit)
    if args.json:
        print_json({"dead_letters": [_document(d) for d in found]})
        return OK
    print_table(
        ["ID", "TRIGGER", "SOURCE", "REASON", "ATTEMPTS", "SAGA ID", "CREATED", "ERROR"],
        [
            (
                d.id,
                d.trigger_id,
                d.source,
                d.reason,
                d.attempts,
                d.saga_id,
                moment(d.created_at),
                clip(d.error),
            )
            for d in found
        ],
        empty="no dead letters",
    )
    return OK


async def _read(store: SagaStore, args: argparse.Namespace) -> DeadLetterRecord:
    record = await store.get_dead_letter(args.id)
    if record is None:
        raise CommandError(f"no dead letter {args.id} in {_where(args)} (sagaz dlq list)")
    return record


def _where(args: argparse.Namespace) -> str:
    from sagaz.storage.url import redact_url

    return redact_url(store_url(args))


async def show_dead_letter(args: argparse.Namespace) -> int:
    """Print one dead letter: its event, error, metadata and traceback."""
    async with opened_store(args) as store:
        record = await _read(store, args)
    document = _document(record)
    if args.json:
        print_json(document)
        return OK
    for key in ("id", "trigger_id", "saga_name", "saga_id", "source", "reason", "attempts"):
        print(f"{key:<11} {'-' if document[key] is None else document[key]}")
    print(f"{'created_at':<11} {moment(record.created_at)}")
    print(f"{'error':<11} {record.error}")
    for key in ("payload", "meta"):
        print(f"\n{key}")
        print_json(document[key])
    if record.traceback:
        print("\ntraceback")
        print(record.traceback.rstrip())
    return OK


async def purge_dead_letters(args: argparse.Namespace) -> int:
    """Delete every dead letter (of one trigger with ``--trigger``, stored before
    ``--older-than``)."""
    count = 0
    before = args.older_than
    async with opened_store(args) as store:
        while found := await store.list_dead_letters(trigger_id=args.trigger, limit=1000):
            old = [d for d in found if before is None or (d.created_at and d.created_at < before)]
            deleted = 0
            for dead in old:
                if dead.id is not None and await store.delete_dead_letter(dead.id):
                    deleted += 1
            count += deleted
            if not deleted or len(old) < len(found):
                break  # the rest is newer (oldest first), or another process deletes them
    print(f"purged {count} dead letter(s)")
    return OK


async def replay_dead_letter(args: argparse.Namespace) -> int:
    """Replay one dead letter; the exit status says whether the event is settled now."""
    from sagaz.config import TriggerConfig
    from sagaz.engine.replay import import_saga, replay

    async with opened_store(args) as store:
        record = await _read(store, args)
        aliases = import_saga(record, args.modules)
        outcome = await replay(
            store, record, config=TriggerConfig(), timeout=args.timeout, module_aliases=aliases
        )
    saga = f"saga {outcome.saga_id}" if outcome.saga_id else "its saga"
    replaced = f"; it is now dead letter {outcome.dead_letter_id}" if outcome.dead_letter_id else ""
    error = f": {outcome.error}" if outcome.error else ""
    if outcome.status == "completed":
        print(f"replayed dead letter {record.id}: {saga} completed")
    elif outcome.status == "duplicate":
        print(f"dead letter {record.id}: {saga} had completed already; dead letter removed")
    elif outcome.status == "filtered":
        print(f"dead letter {record.id}: the trigger skips the event now; dead letter removed")
    elif outcome.status in ("compensated", "failed", "invalid", "rejected"):
        print(f"replayed dead letter {record.id}: {outcome.status} again{error}{replaced}")
    elif outcome.status == "busy":
        print(f"dead letter {record.id}: another worker is running {saga}; it is kept, try later")
    else:  # timeout, dropped, or the store failed under the run
        print(f"dead letter {record.id}: {outcome.status}{error}; the dead letter is kept")
    return OK if outcome.settled else FAILED
