"""``sagaz ui``: the dashboard alone, against any store (the work of every engine on it)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from sagaz.cli.exits import OK, CommandError
from sagaz.cli.modules import import_modules
from sagaz.cli.store import opened_store

__all__ = ["add_commands", "serve_dashboard"]


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``ui``."""
    parser = commands.add_parser(
        "ui",
        parents=common,
        help="serve the dashboard (triggers, sagas, dead letters) for the store at /sagaz",
        description="Serve the dashboard for the store, at http://HOST:PORT/sagaz. Every page "
        "needs a token: --token, else SAGAZ_DASHBOARD_TOKENS or SAGAZ_WEBHOOK_TOKENS (JSON "
        "lists). Name the modules of your sagas to replay their dead letters from here.",
    )
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="e.g. myapp.sagas")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--token", action="append", default=None, help="a bearer token (repeat for more)"
    )
    parser.add_argument(
        "--read-only-token",
        action="append",
        default=None,
        help="a token that may read but take no action (repeat for more)",
    )
    parser.set_defaults(handler=serve_dashboard)


async def serve_dashboard(args: argparse.Namespace) -> int:
    """Serve :func:`sagaz.dashboard_app` on the store until SIGINT/SIGTERM."""
    from sagaz._imports import require_extra
    from sagaz.config import TriggerConfig
    from sagaz.dashboard import dashboard_app

    require_extra("dashboard", "uvicorn")
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route

    import_modules(args.modules)
    config = TriggerConfig()
    tokens = args.token or list(config.dashboard_tokens or config.webhook_tokens)
    read_only = args.read_only_token or list(config.dashboard_read_only_tokens)
    if not tokens and not read_only:
        raise CommandError(
            "the dashboard needs a token: pass --token, or set SAGAZ_DASHBOARD_TOKENS "
            "(a JSON list, e.g. '[\"s3cret\"]')"
        )
    async with opened_store(args) as store:
        dashboard = dashboard_app(store=store, tokens=tokens, read_only_tokens=read_only)

        async def home(request: Any) -> RedirectResponse:
            return RedirectResponse("/sagaz/triggers", status_code=303)

        app = Starlette(routes=[Route("/", home), Mount("/sagaz", dashboard)])
        server = uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, log_config=None, lifespan="off")
        )
        print(f"sagaz dashboard on http://{args.host}:{args.port}/sagaz (pid {os.getpid()})")
        await server.serve()
    return OK
