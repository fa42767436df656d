"""The dashboard: triggers, sagas and dead letters in a browser (the ``dashboard`` extra).

:func:`dashboard_app` builds a Starlette app; the engine mounts it at ``/sagaz`` on the webhook
server when ``TriggerConfig.dashboard`` is on, you can mount it in your own app, and
``sagaz ui --store URL`` serves it alone. Starlette and Jinja2 are imported when it is built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["dashboard_app"]


def dashboard_app(
    *,
    store: Any = None,
    engine: Any = None,
    tokens: list[str] | None = None,
    read_only_tokens: list[str] | None = None,
    root_path: str = "",
) -> Any:
    """The dashboard's ASGI (Starlette) app.

    ``engine``: a running :class:`~sagaz.TriggerEngine` (its counters, pauses and store);
    else ``store`` (a :class:`~sagaz.abc.SagaStore`, started by the caller). ``tokens``:
    bearer tokens for every page and action (default: the engine's ``dashboard_tokens``, else
    its ``webhook_tokens``); ``read_only_tokens`` read but take no action. Without any token
    the app refuses to build: it is never open.

    >>> app.mount("/sagaz", sagaz.dashboard_app(store=store, tokens=["s3cret"]))  # doctest: +SKIP
    """
    from sagaz._imports import require_extra

    require_extra("dashboard", "jinja2")
    require_extra("dashboard", "starlette")
    from sagaz.dashboard.app import build_app

    return build_app(
        store=store,
        engine=engine,
        tokens=tokens,
        read_only_tokens=read_only_tokens,
        root_path=root_path,
    )
