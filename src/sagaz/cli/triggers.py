"""``sagaz triggers list MODULE...``: the triggers the modules register."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sagaz.cli.exits import OK
from sagaz.cli.modules import import_modules
from sagaz.cli.output import print_json, print_table

__all__ = ["add_commands"]


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``triggers list``."""
    triggers = commands.add_parser("triggers", help="inspect the registered triggers")
    actions = triggers.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=common, help="the triggers that importing the modules registers"
    )
    listing.add_argument("modules", nargs="+", metavar="MODULE", help="e.g. myapp.sagas")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    listing.set_defaults(handler=list_triggers)


async def list_triggers(args: argparse.Namespace) -> int:
    """Import the modules and print their triggers."""
    from sagaz.triggers import registry

    import_modules(args.modules)
    found = [
        {
            "trigger_id": definition.trigger_id,
            "saga_name": definition.saga_name,
            "source": definition.source,
            "enabled": definition.enabled,
            "options": definition.source_options.describe(),
        }
        for definition in registry.triggers()
    ]
    if args.json:
        print_json({"triggers": found})
        return OK
    print_table(
        ["TRIGGER", "SOURCE", "OPTIONS"],
        [(t["trigger_id"], t["source"], json.dumps(t["options"], default=str)) for t in found],
        empty=f"no triggers registered by {', '.join(args.modules)}",
    )
    return OK
