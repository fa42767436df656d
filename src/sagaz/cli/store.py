"""Which store a ``sagaz`` command uses: ``--store URL`` (before or after the subcommand),
else ``SAGAZ_STORE_URL``, else ``sqlite:///sagaz.db``."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sagaz.abc import SagaStore
from sagaz.cli.exits import CommandError

__all__ = ["DEFAULT_STORE", "STORE_HELP", "opened_store", "store_at", "store_options", "store_url"]

DEFAULT_STORE = "sqlite:///sagaz.db"
STORE_HELP = (
    f"store URL (default: $SAGAZ_STORE_URL, else {DEFAULT_STORE}): sqlite:///path.db, "
    "postgresql://user:pass@host/db[?schema=sagaz], redis://host:6379/0[?prefix=sagaz]"
)


def store_options() -> argparse.ArgumentParser:
    """The ``--store`` option of every subcommand, as a parent parser.

    Its default is *suppressed*, so ``sagaz --store A dlq list`` keeps ``A`` and
    ``sagaz dlq list --store B`` sets ``B``.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--store", default=argparse.SUPPRESS, metavar="URL", help=STORE_HELP)
    return parent


def store_url(args: argparse.Namespace) -> str:
    """The store URL the command line chose."""
    return getattr(args, "store", None) or os.environ.get("SAGAZ_STORE_URL") or DEFAULT_STORE


def store_at(args: argparse.Namespace) -> SagaStore:
    """The (unstarted) store the command line chose; a bad URL is a usage error."""
    from sagaz.storage.url import store_from_url

    return store_from_url(store_url(args))


@asynccontextmanager
async def opened_store(
    args: argparse.Namespace, *, create: bool = False
) -> AsyncIterator[SagaStore]:
    """The store the command line chose, started, and stopped afterwards.

    Without ``create``, a database with no sagaz schema is a usage error rather than a new,
    empty database: ``sagaz sagas list`` with a mistyped ``--store`` says so, and creates
    no file.
    """
    store = store_at(args)
    if not create:
        versions = await store.schema_versions()
        if versions.expected and not versions.current:
            from sagaz.storage.url import redact_url

            raise CommandError(
                f"{redact_url(store_url(args))} holds no sagaz data yet (no schema): check "
                "--store or SAGAZ_STORE_URL"
            )
    async with store:
        yield store
