"""``sagaz db upgrade`` and ``sagaz db status``: the store's schema version.

A store creates its schema on an empty database by itself (the first start needs no step),
but never migrates an existing one: on a schema older than this sagaz it refuses to start
and says to run ``sagaz db upgrade --store URL``, which runs the migrations (idempotent,
serialised with other processes by the store's lock).
"""

from __future__ import annotations

import argparse
from typing import Any

from sagaz.cli.exits import FAILED, OK
from sagaz.cli.output import print_json
from sagaz.cli.store import store_at, store_url

__all__ = ["add_commands"]


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``db upgrade`` and ``db status``."""
    db = commands.add_parser("db", help="the store's schema: upgrade, status")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = actions.add_parser(
        "upgrade",
        parents=common,
        help="create the schema or run its migrations (idempotent)",
    )
    upgrade.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    upgrade.set_defaults(handler=upgrade_schema)
    status = actions.add_parser(
        "status",
        parents=common,
        help="the schema version; exit status 1 when sagaz db upgrade must run",
    )
    status.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    status.set_defaults(handler=schema_status)


def _where(args: argparse.Namespace) -> str:
    from sagaz.storage.url import redact_url

    return redact_url(store_url(args))


async def upgrade_schema(args: argparse.Namespace) -> int:
    """Bring the schema to this sagaz's version; say from which version to which."""
    store = store_at(args)
    before = await store.upgrade_schema()
    where = _where(args)
    if args.json:
        print_json({"store": where, "from_version": before.current, "to_version": before.expected})
    elif before.expected == 0:
        print(f"{where}: this store keeps no schema; nothing to upgrade")
    elif before.current == before.expected:
        print(f"{where}: schema at version {before.expected} already; nothing to do")
    elif before.current == 0:
        print(f"{where}: schema created at version {before.expected}")
    else:
        print(f"{where}: schema upgraded from version {before.current} to {before.expected}")
    return OK


async def schema_status(args: argparse.Namespace) -> int:
    """Say which version the schema has and whether ``sagaz db upgrade`` must run."""
    from shlex import quote

    versions = await store_at(args).schema_versions()
    where = _where(args)
    if args.json:
        print_json(
            {
                "store": where,
                "version": versions.current,
                "expected": versions.expected,
                "outdated": versions.outdated,
            }
        )
    elif versions.expected == 0:
        print(f"{where}: this store keeps no schema")
    elif versions.outdated:
        print(
            f"{where}: schema version {versions.current}, this sagaz needs "
            f"{versions.expected}; run: sagaz db upgrade --store {quote(where)}"
        )
    elif versions.current > versions.expected:
        print(
            f"{where}: schema version {versions.current}, newer than the "
            f"{versions.expected} this sagaz understands: upgrade sagaz (pip install -U sagaz)"
        )
    elif versions.current == 0:
        print(f"{where}: no schema yet (the first start, or sagaz db upgrade, creates it)")
    else:
        print(f"{where}: schema version {versions.current}, current")
    return OK if versions.current in (0, versions.expected) else FAILED
