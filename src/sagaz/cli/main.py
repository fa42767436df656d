"""``sagaz`` command line.

* ``sagaz run myapp.sagas [more.modules]`` — import the modules (registering their triggers)
  and run the engine until SIGINT/SIGTERM, then stop gracefully.
* ``sagaz triggers list [myapp.sagas]`` — the triggers and whether each is running or paused:
  the triggers the store knows (an engine records its triggers when it starts), or with
  modules, the triggers they register (source and options too).
* ``sagaz triggers pause ID`` / ``sagaz triggers resume ID`` — pause or resume a trigger in
  the store; every engine on it follows within ``trigger_state_interval_seconds``.
* ``sagaz dlq list|show ID|replay ID|purge`` — dead letters in the store. ``replay`` imports
  the saga's module stored with the dead letter (``--modules`` names others) and runs the
  event again as its source delivered it, as a new attempt of the same saga; exit status 0
  once the event is settled, 1 when it failed again, 2 when nothing could be run.
* ``sagaz --version`` — the installed version.

The store is ``--store URL``, else ``SAGAZ_STORE_URL``, else ``sqlite:///sagaz.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sagaz import __version__
from sagaz.abc import SagaStore
from sagaz.records import DeadLetterRecord

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///sagaz.db"


def _store(url: str | None) -> SagaStore:
    from sagaz.storage.url import store_from_url

    return store_from_url(url or os.environ.get("SAGAZ_STORE_URL") or DEFAULT_STORE)


def _import(modules: Sequence[str]) -> None:
    sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise SystemExit(f"sagaz: cannot import {name!r}: {exc}") from exc


async def _run(args: argparse.Namespace) -> int:
    from sagaz.config import TriggerConfig
    from sagaz.engine.engine import TriggerEngine

    _import(args.modules)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _store(args.store) as store, TriggerEngine(TriggerConfig(), store) as engine:
        print(f"sagaz: running {len(engine.triggers)} trigger(s); Ctrl-C to stop", flush=True)
        await stop.wait()
        print("sagaz: stopping (finishing in-flight sagas)...", flush=True)
    return 0


async def _triggers(args: argparse.Namespace) -> int:
    if args.action == "list":
        return await _list_triggers(args)
    from sagaz.engine.pausing import set_trigger_enabled
    from sagaz.exceptions import TriggerNotFoundError

    paused = args.action == "pause"
    async with _store(args.store) as store:
        try:
            await set_trigger_enabled(store, args.trigger_id, not paused)
        except TriggerNotFoundError as exc:
            return _fail(str(exc))
    print(
        f"{'paused' if paused else 'resumed'} trigger {args.trigger_id}: every engine on "
        f"{_redacted(_store_url(args.store))} follows within its trigger_state_interval_seconds"
    )
    return 0


async def _list_triggers(args: argparse.Namespace) -> int:
    """One line per trigger: id, source (with modules) or saga, running/paused, details."""
    from sagaz.triggers import registry

    _import(args.modules)
    async with _store(args.store) as store:
        rows = {row.trigger_name: row for row in await store.list_trigger_schedules()}
    if args.modules:
        for definition in registry.triggers():
            row = rows.get(definition.trigger_id)
            state = "paused" if row is not None and not row.enabled else "running"
            options = json.dumps(definition.source_options.describe(), default=str)
            print(f"{definition.trigger_id}\t{definition.source}\t{state}\t{options}")
        return 0
    if not rows:
        print(
            f"sagaz: no trigger in {_redacted(_store_url(args.store))} yet: an engine records "
            "its triggers when it starts; or name the modules: sagaz triggers list myapp.sagas",
            file=sys.stderr,
        )
    for row in rows.values():
        state = "running" if row.enabled else "paused"
        polled = f"\tlast poll {row.last_poll_at.isoformat()}" if row.last_poll_at else ""
        print(f"{row.trigger_name}\t{row.saga_name}\t{state}{polled}")
    return 0


def _redacted(url: str) -> str:
    from sagaz.storage.url import redact_url

    return redact_url(url)


async def _dlq(args: argparse.Namespace) -> int:
    async with _store(args.store) as store:
        if args.action == "list":
            for dead in await store.list_dead_letters(limit=args.limit):
                print(
                    f"{dead.id}\t{dead.trigger_id}\t{dead.source or '-'}\t{dead.reason}\t"
                    f"{dead.saga_id or '-'}\t{dead.error[:80]}"
                )
            return 0
        if args.action == "purge":
            count = 0
            for dead in await store.list_dead_letters(limit=1_000_000):
                if dead.id is not None and await store.delete_dead_letter(dead.id):
                    count += 1
            print(f"purged {count} dead letter(s)")
            return 0
        if args.id is None:
            return _fail(f"sagaz dlq {args.action} needs a dead-letter ID (sagaz dlq list)")
        record = await store.get_dead_letter(args.id)
        if record is None:
            return _fail(f"no dead letter {args.id} in {_store_url(args.store)} (sagaz dlq list)")
        if args.action == "show":
            print(json.dumps(_shown(record), indent=2, default=_jsonable))
            return 0
        return await _replay(args, store, record)


def _fail(message: str) -> int:
    """Exit status 2 with ``message``: the command could not do what was asked."""
    print(f"sagaz: {message}", file=sys.stderr)
    return 2


def _store_url(url: str | None) -> str:
    return url or os.environ.get("SAGAZ_STORE_URL") or DEFAULT_STORE


def _shown(record: DeadLetterRecord) -> dict[str, Any]:
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


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback of ``dlq show``: bytes say they are bytes (as text where they
    are UTF-8), datetimes are ISO 8601."""
    if isinstance(value, bytes):
        try:
            return {"bytes": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"bytes_base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


async def _replay(args: argparse.Namespace, store: SagaStore, record: DeadLetterRecord) -> int:
    """Exit status 0: the event is settled (its saga completed, now or before, or its trigger
    skips it); 1: the replay ran and failed again (or did not finish); 2: nothing was run."""
    from sagaz.config import TriggerConfig
    from sagaz.engine.replay import import_saga, replay
    from sagaz.exceptions import DeadLetterReplayError

    try:
        aliases = import_saga(record, args.modules)
        outcome = await replay(
            store, record, config=TriggerConfig(), timeout=args.timeout, module_aliases=aliases
        )
    except DeadLetterReplayError as exc:
        return _fail(str(exc))
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
    return 0 if outcome.settled else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sagaz`` command."""
    parser = argparse.ArgumentParser(prog="sagaz", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sagaz {__version__}")
    parser.add_argument("--store", help=f"store URL (default: $SAGAZ_STORE_URL or {DEFAULT_STORE})")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the engine for the triggers of these modules")
    run.add_argument("modules", nargs="+")
    triggers = commands.add_parser("triggers", help="triggers: list, pause, resume")
    trigger_actions = triggers.add_subparsers(dest="action", required=True)
    listed = trigger_actions.add_parser(
        "list", help="the triggers (those the store knows, or those of MODULES) and their state"
    )
    listed.add_argument("modules", nargs="*")
    for action in ("pause", "resume"):
        changed = trigger_actions.add_parser(
            action, help=f"{action} a trigger in every engine on the store"
        )
        changed.add_argument("trigger_id", metavar="ID", help="'{saga_name}.{method}'")
    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay, purge")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("id", nargs="?", type=int)
    dlq.add_argument(
        "--modules",
        nargs="*",
        default=[],
        help="modules (or .py files) that define the saga, for replay; by default the module "
        "stored with the dead letter",
    )
    dlq.add_argument("--limit", type=int, default=100)
    dlq.add_argument("--timeout", type=float, default=60.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sagaz`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return asyncio.run(_run(args))
    if args.command == "triggers":
        return asyncio.run(_triggers(args))
    return asyncio.run(_dlq(args))


if __name__ == "__main__":
    raise SystemExit(main())
