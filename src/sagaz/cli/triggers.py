"""``sagaz triggers list|pause|resume|run|backfill``: the triggers, their running/paused state
in the store; ``run`` and ``backfill`` are in :mod:`sagaz.cli.schedules`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sagaz.cli import schedules
from sagaz.cli.exits import OK, CommandError
from sagaz.cli.modules import import_modules
from sagaz.cli.output import moment, print_json, print_table
from sagaz.cli.store import opened_store, store_url

__all__ = ["add_commands"]


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``triggers list``, ``triggers pause ID``, ``triggers resume ID``, ``triggers
    run ID`` and ``triggers backfill ID``."""
    triggers = commands.add_parser(
        "triggers", help="the triggers: list, pause, resume, run now, backfill"
    )
    actions = triggers.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=common,
        help="the triggers (those the store knows, or those the modules register) and their state",
    )
    listing.add_argument("modules", nargs="*", metavar="MODULE", help="e.g. myapp.sagas")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    listing.set_defaults(handler=list_triggers)
    for action, verb in (("pause", "pause"), ("resume", "resume")):
        parser = actions.add_parser(
            action,
            parents=common,
            help=f"{verb} a trigger in the store: every engine on it follows within "
            "trigger_state_interval_seconds",
        )
        parser.add_argument("trigger_id", metavar="ID", help="e.g. order-processing.from_kafka")
        parser.set_defaults(handler=set_trigger_state, paused=action == "pause")
    schedules.add_commands(actions, common)


async def set_trigger_state(args: argparse.Namespace) -> int:
    """Pause or resume one trigger in the store; an unknown id is a usage error."""
    from sagaz.engine.pausing import set_trigger_enabled
    from sagaz.exceptions import TriggerNotFoundError
    from sagaz.storage.url import redact_url

    async with opened_store(args) as store:
        try:
            await set_trigger_enabled(store, args.trigger_id, not args.paused)
        except TriggerNotFoundError as exc:
            raise CommandError(str(exc)) from exc
    print(
        f"{'paused' if args.paused else 'resumed'} trigger {args.trigger_id}: every engine on "
        f"{redact_url(store_url(args))} follows within its trigger_state_interval_seconds"
    )
    return OK


async def list_triggers(args: argparse.Namespace) -> int:
    """The triggers with their state: those the modules register, else those the store knows."""
    from sagaz.triggers import registry

    import_modules(args.modules)
    try:
        async with opened_store(args) as store:
            rows = {row.trigger_name: row for row in await store.list_trigger_schedules()}
    except CommandError:
        if not args.modules:
            raise
        rows = {}  # no sagaz data in the store yet: every trigger runs
    if args.modules:
        found = [
            {
                "trigger_id": definition.trigger_id,
                "saga_name": definition.saga_name,
                "source": definition.source,
                "state": _state(rows.get(definition.trigger_id)),
                "options": definition.source_options.describe(),
            }
            for definition in registry.triggers()
        ]
        if args.json:
            print_json({"triggers": found})
            return OK
        print_table(
            ["TRIGGER", "SOURCE", "STATE", "OPTIONS"],
            [
                (t["trigger_id"], t["source"], t["state"], json.dumps(t["options"], default=str))
                for t in found
            ],
            empty=f"no triggers registered by {', '.join(args.modules)}",
        )
        return OK
    known = [
        {
            "trigger_id": row.trigger_name,
            "saga_name": row.saga_name,
            "state": _state(row),
            "last_poll_at": moment(row.last_poll_at),
        }
        for row in rows.values()
    ]
    if args.json:
        print_json({"triggers": known})
        return OK
    print_table(
        ["TRIGGER", "SAGA", "STATE", "LAST POLL"],
        [(t["trigger_id"], t["saga_name"], t["state"], t["last_poll_at"]) for t in known],
        empty="no trigger in the store yet: an engine records its triggers when it starts; or "
        "name the modules: sagaz triggers list myapp.sagas",
    )
    return OK


def _state(row: Any) -> str:
    return "paused" if row is not None and not row.enabled else "running"
