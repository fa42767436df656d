"""``sagaz`` command line.

* ``sagaz run myapp.sagas [more.modules]`` — import the modules (registering their triggers)
  and run the engine until SIGINT/SIGTERM, then stop gracefully.
* ``sagaz triggers list myapp.sagas`` — the registered triggers.
* ``sagaz dlq list|show ID|replay ID|purge`` — dead letters in the store.
* ``sagaz --version`` — the installed version.

The store is ``--store URL``, else ``SAGAZ_STORE_URL``, else ``sqlite:///sagaz.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sagaz import __version__
from sagaz.abc import SagaStore

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


def _list_triggers(args: argparse.Namespace) -> int:
    from sagaz.triggers import registry

    _import(args.modules)
    for definition in registry.triggers():
        options = {k: v for k, v in definition.source_options.items() if not callable(v)}
        print(f"{definition.trigger_id}\t{definition.source}\t{json.dumps(options, default=str)}")
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    async with _store(args.store) as store:
        if args.action == "list":
            for dead in await store.list_dead_letters(limit=args.limit):
                print(f"{dead.id}\t{dead.trigger_id}\t{dead.reason}\t{dead.error[:80]}")
            return 0
        if args.action == "purge":
            count = 0
            for dead in await store.list_dead_letters(limit=1_000_000):
                if dead.id is not None and await store.delete_dead_letter(dead.id):
                    count += 1
            print(f"purged {count} dead letter(s)")
            return 0
        if args.id is None:
            raise SystemExit(f"sagaz dlq {args.action} needs a dead-letter ID")
        found = await store.get_dead_letter(args.id)
        if found is None:
            raise SystemExit(f"sagaz: no dead letter {args.id}")
        record = found
        if args.action == "show":
            data: dict[str, Any] = {
                "id": record.id,
                "trigger_id": record.trigger_id,
                "saga_id": record.saga_id,
                "reason": record.reason,
                "attempts": record.attempts,
                "error": record.error,
                "payload": record.payload
                if not isinstance(record.payload, bytes)
                else record.payload.decode("utf-8", "replace"),
                "meta": record.meta,
                "traceback": record.traceback,
            }
            print(json.dumps(data, indent=2, default=str))
            return 0
        return await _replay(args, store, record)


async def _replay(args: argparse.Namespace, store: SagaStore, record: Any) -> int:
    from sagaz.config import TriggerConfig
    from sagaz.engine.engine import TriggerEngine
    from sagaz.events import AdmissionOutcome
    from sagaz.triggers import registry

    _import(args.modules)
    definition = registry.get(record.trigger_id)
    async with TriggerEngine(
        TriggerConfig(), store, triggers=[definition], start_sources=False
    ) as engine:
        result = await engine.dispatch(
            record.trigger_id, record.payload, identity=f"replay:{record.id}"
        )
        if result.outcome is not AdmissionOutcome.ACCEPTED or result.saga_id is None:
            print(f"replay not accepted: {result.outcome.value} {result.error or ''}")
            return 1
        saga = await engine.wait_for(result.saga_id, timeout=args.timeout)
    status = saga.status.value if saga else "unknown"
    print(f"replayed dead letter {record.id} as saga {result.saga_id}: {status}")
    if saga is not None and saga.succeeded:
        await store.delete_dead_letter(record.id)
        return 0
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sagaz`` command."""
    parser = argparse.ArgumentParser(prog="sagaz", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sagaz {__version__}")
    parser.add_argument("--store", help=f"store URL (default: $SAGAZ_STORE_URL or {DEFAULT_STORE})")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the engine for the triggers of these modules")
    run.add_argument("modules", nargs="+")
    triggers = commands.add_parser("triggers", help="inspect registered triggers")
    triggers.add_argument("action", choices=["list"])
    triggers.add_argument("modules", nargs="+")
    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay, purge")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("id", nargs="?", type=int)
    dlq.add_argument("--modules", nargs="*", default=[], help="modules to import for replay")
    dlq.add_argument("--limit", type=int, default=100)
    dlq.add_argument("--timeout", type=float, default=60.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sagaz`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return asyncio.run(_run(args))
    if args.command == "triggers":
        return _list_triggers(args)
    return asyncio.run(_dlq(args))


if __name__ == "__main__":
    raise SystemExit(main())
