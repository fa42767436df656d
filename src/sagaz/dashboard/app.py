"""The dashboard's Starlette app: server-rendered pages (Jinja2, autoescaped), POST actions."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sagaz.dashboard.auth import COOKIE, Access, Tokens
from sagaz.dashboard.chart import per_minute_svg
from sagaz.exceptions import ConfigurationError, SagaControlError, SagazError
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["PAGE_SIZE", "build_app"]

logger = logging.getLogger(__name__)

#: rows on one page of sagas or dead letters (``?limit=`` may ask for fewer, never more)
PAGE_SIZE = 50
#: the biggest form body an action reads
_MAX_FORM_BYTES = 64 * 1024
#: sagas read to draw the last hour's chart, per status
_CHART_LIMIT = 5000
_AGES = {"5m": 5, "1h": 60, "24h": 24 * 60, "7d": 7 * 24 * 60}

Handler = Callable[[Request, Access], Awaitable[Response]]


@dataclass(slots=True)
class _Context:
    store: Any
    engine: Any
    tokens: Tokens
    env: jinja2.Environment
    root_path: str


def build_app(
    *,
    store: Any,
    engine: Any,
    tokens: list[str] | None,
    read_only_tokens: list[str] | None,
    root_path: str = "",
) -> Starlette:
    """See :func:`sagaz.dashboard.dashboard_app`."""
    if engine is None and store is None:
        raise ConfigurationError("dashboard_app() needs a store= or an engine=")
    config = getattr(engine, "config", None)
    if tokens is None and config is not None:
        tokens = list(config.dashboard_tokens or config.webhook_tokens)
    if read_only_tokens is None and config is not None:
        read_only_tokens = list(config.dashboard_read_only_tokens)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,  # nothing from a context, an event or an error is trusted
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pretty"] = _pretty
    env.filters["q"] = lambda value: quote(str(value), safe="")
    ctx = _Context(store, engine, Tokens(tokens or [], read_only_tokens or []), env, root_path)

    def page(handler: Handler, *, action: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            access = ctx.tokens.check(
                request.headers.get("authorization"), request.cookies.get(COOKIE)
            )
            if access is None:
                return _render(ctx, request, "login.html", status=401, access=None, failed=False)
            if action:
                if not access.can_act:
                    return _text(403, "this token may read the dashboard but take no action")
                form = await _form(request)
                if form is None or form.get("csrf", [""])[0] != access.csrf:
                    return _text(403, "missing or wrong CSRF token")
                request.state.form = form
            return await handler(request, access)

        return endpoint

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return _render(ctx, request, "login.html", status=200, access=None, failed=False)
        form = await _form(request) or {}
        cookie = ctx.tokens.cookie_for(form.get("token", [""])[0])
        if cookie is None:
            return _render(ctx, request, "login.html", status=401, access=None, failed=True)
        response = RedirectResponse(_base(ctx, request) + "/triggers", status_code=303)
        response.set_cookie(
            COOKIE, cookie, httponly=True, samesite="strict", path=_base(ctx, request) or "/"
        )
        return response

    async def index(request: Request, access: Access) -> Response:
        return RedirectResponse(_base(ctx, request) + "/triggers", status_code=303)

    async def triggers(request: Request, access: Access) -> Response:
        message = request.query_params.get("message", "")
        return _render(
            ctx, request, "triggers.html", access=access, message=message, **await _triggers(ctx)
        )

    async def trigger_action(request: Request, access: Access) -> Response:
        trigger_id = request.path_params["trigger_id"]
        if request.path_params["verb"] == "run":
            return await run_now(request, trigger_id)
        if request.path_params["verb"] not in ("pause", "resume"):
            return _text(404, "no such action")
        paused = request.path_params["verb"] == "pause"
        engine = ctx.engine
        if engine is not None and getattr(engine, "running", False):
            await (engine.pause_trigger if paused else engine.resume_trigger)(trigger_id)
        else:
            from sagaz.engine.engine import pause_trigger, resume_trigger

            await (pause_trigger if paused else resume_trigger)(trigger_id, store=_store(ctx))
        return RedirectResponse(_base(ctx, request) + "/triggers", status_code=303)

    async def run_now(request: Request, trigger_id: str) -> Response:
        """Fire a cron or poll trigger of the serving engine once, now (``sagaz triggers run
        ID``); back to the triggers page with the saga it started, or why none."""
        from sagaz.engine.schedules import run_in_engine

        engine = ctx.engine
        if engine is None or not getattr(engine, "running", False):
            message = (
                f"not run: {trigger_id} runs in no engine serving this page; use "
                f"sagaz triggers run {trigger_id}"
            )
        else:
            try:
                report = await run_in_engine(engine, trigger_id, timeout=0)
            except SagazError as exc:
                message = f"not run: {exc}"
            except Exception as exc:  # the poll() of a poll trigger: user code
                logger.warning("dashboard run of trigger %s failed", trigger_id, exc_info=True)
                message = f"not run: {type(exc).__name__}: {exc}"
            else:
                run = report.runs[0]
                message = f"{trigger_id}: {run.outcome}"
                if run.saga_id:
                    message += f", saga {run.saga_id}"
                if run.error:
                    message += f" ({run.error})"
        return _back(ctx, request, "/triggers", message)

    async def sagas(request: Request, access: Access) -> Response:
        return _render(ctx, request, "sagas.html", access=access, **await _sagas(ctx, request))

    async def saga(request: Request, access: Access) -> Response:
        store = _store(ctx)
        saga_id = request.path_params["saga_id"]
        record = await store.get_saga(saga_id)
        if record is None:
            return _text(404, "no such saga")
        steps = sorted(
            await store.get_steps(saga_id),
            key=lambda s: (s.completed_seq is None, s.completed_seq or 0, s.updated_at or _EPOCH),
        )
        try:
            outbox = await store.list_saga_outbox(saga_id, limit=PAGE_SIZE)
        except NotImplementedError:
            outbox = None
        try:  # operators' requests (sagaz sagas cancel|resume|retry) and what came of them
            history = await store.list_saga_history(saga_id, limit=PAGE_SIZE)
            requests = await store.list_saga_requests(saga_id=saga_id)
        except NotImplementedError:
            history, requests = None, []
        return _render(
            ctx,
            request,
            "saga.html",
            access=access,
            saga=record,
            steps=steps,
            outbox=outbox,
            history=history,
            open_request=requests[0] if requests else None,
            actions=_saga_actions(record.status) if history is not None else (),
            message=request.query_params.get("message", ""),
        )

    async def saga_action(request: Request, access: Access) -> Response:
        """``cancel``, ``resume`` or ``retry`` (``step=`` from the form) the saga, as
        ``sagaz sagas cancel|resume|retry`` would; back to its page with what came of it."""
        from sagaz.engine import steering

        saga_id = request.path_params["saga_id"]
        verb = request.path_params["verb"]
        form: dict[str, list[str]] = request.state.form
        reason = (form.get("reason", [""])[0] or "").strip()[:500] or None
        step = (form.get("step", [""])[0] or "").strip() or None
        store = _store(ctx)
        actor = f"dashboard ({steering.default_actor()})"
        try:
            if verb == "cancel":
                made = await steering.cancel_saga(saga_id, reason=reason, actor=actor, store=store)
            elif verb == "resume":
                made = await steering.resume_saga(saga_id, reason=reason, actor=actor, store=store)
            elif verb == "retry" and step is not None:
                made = await steering.retry_saga(
                    saga_id, from_step=step, reason=reason, actor=actor, store=store
                )
            elif verb == "retry":
                return _text(400, "retry needs the step to run again from (step=NAME)")
            else:
                return _text(404, "no such action")
        except SagaControlError as exc:
            message = f"not done: {exc}"
        else:
            engine = ctx.engine
            notice = getattr(getattr(engine, "steering", None), "notice", None)
            if notice is not None and getattr(engine, "running", False):
                notice(made)  # the engine serving this page acts now, not at its next read
            message = f"{verb} requested: the engines act on it within seconds"
        return _back(ctx, request, f"/sagas/{quote(saga_id, safe='')}", message)

    async def dead_letters(request: Request, access: Access) -> Response:
        trigger_id = request.query_params.get("trigger") or None
        rows = await _store(ctx).list_dead_letters(trigger_id=trigger_id, limit=PAGE_SIZE + 1)
        return _render(
            ctx,
            request,
            "dead_letters.html",
            access=access,
            rows=rows[:PAGE_SIZE],
            more=len(rows) > PAGE_SIZE,
            trigger=trigger_id or "",
            message=request.query_params.get("message", ""),
        )

    async def dead_letter(request: Request, access: Access) -> Response:
        record = await _store(ctx).get_dead_letter(_int(request.path_params["dl_id"]))
        if record is None:
            return _text(404, "no such dead letter")
        return _render(ctx, request, "dead_letter.html", access=access, dl=record)

    async def dead_letter_action(request: Request, access: Access) -> Response:
        form: dict[str, list[str]] = request.state.form
        ids = [_int(v) for v in form.get("id", [])][:PAGE_SIZE]
        store = _store(ctx)
        done: list[str] = []
        if request.path_params["verb"] not in ("replay", "purge"):
            return _text(404, "no such action")
        for dl_id in ids:
            if request.path_params["verb"] == "purge":
                if await store.delete_dead_letter(dl_id):
                    done.append(f"{dl_id}: purged")
                continue
            record = await store.get_dead_letter(dl_id)
            if record is None:
                continue
            done.append(f"{dl_id}: {await _replay(ctx, record)}")
        message = "; ".join(done) or "nothing selected"
        return _back(ctx, request, "/dead-letters", message)

    routes = [
        Route("/", page(index)),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/triggers", page(triggers)),
        Route(
            "/triggers/{trigger_id:path}/{verb:str}",
            page(trigger_action, action=True),
            methods=["POST"],
        ),
        Route("/sagas", page(sagas)),
        Route(
            "/sagas/{saga_id:str}/{verb:str}",
            page(saga_action, action=True),
            methods=["POST"],
        ),
        Route("/sagas/{saga_id:path}", page(saga)),
        Route("/dead-letters", page(dead_letters)),
        Route("/dead-letters/{dl_id:int}", page(dead_letter)),
        Route("/dead-letters/{verb:str}", page(dead_letter_action, action=True), methods=["POST"]),
    ]
    return Starlette(routes=routes)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _store(ctx: _Context) -> Any:
    return ctx.engine.store if ctx.engine is not None else ctx.store


def _base(ctx: _Context, request: Request) -> str:
    root: str = request.scope.get("root_path", "") or ctx.root_path
    return root.rstrip("/")


def _back(ctx: _Context, request: Request, page: str, message: str) -> Response:
    """After an action: to ``page`` (under the dashboard's root), which shows ``message``."""
    target = f"{_base(ctx, request)}{page}?message={quote(message, safe='')}"
    return RedirectResponse(target, status_code=303)


def _text(status: int, text: str) -> Response:
    return Response(text, status, media_type="text/plain; charset=utf-8")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The urlencoded form of a POST (bounded), or ``None`` when it is too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return None
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _render(
    ctx: _Context, request: Request, name: str, *, status: int = 200, **values: Any
) -> Response:
    html = ctx.env.get_template(name).render(base=_base(ctx, request), **values)
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
    }
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="sagaz"'
    return HTMLResponse(html, status, headers=headers)


async def _triggers(ctx: _Context) -> dict[str, Any]:
    store = _store(ctx)
    schedules = {s.trigger_name: s for s in await store.list_trigger_schedules()}
    engine = ctx.engine
    running = engine is not None and getattr(engine, "running", False)
    metrics: Any = engine.metrics if running else None
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    if running:
        for trigger_id, active in sorted(engine.triggers.items()):
            seen.add(trigger_id)
            definition = active.definition
            schedule = schedules.get(trigger_id)
            rows.append(
                {
                    "id": trigger_id,
                    "source": definition.source,
                    "options": _key_options(definition.options),
                    "paused": active.paused or (schedule is not None and not schedule.enabled),
                    "runnable": definition.source == "cron" or definition.poll_trigger is not None,
                    "received": metrics.received[trigger_id],
                    "started": metrics.accepted[trigger_id],
                    "completed": metrics.completed[trigger_id],
                    "failed": metrics.compensated[trigger_id] + metrics.failed[trigger_id],
                    "dead_lettered": metrics.dead_lettered[trigger_id],
                    "queued": engine.state.queue.depth(trigger_id),
                    "not_started": metrics.not_started_by(trigger_id),
                }
            )
    for name, schedule in sorted(schedules.items()):
        if name not in seen:  # another engine's trigger on the same store
            rows.append(
                {
                    "id": name,
                    "source": "",
                    "options": f"saga {schedule.saga_name}",
                    "paused": not schedule.enabled,
                    "runnable": False,
                    "received": None,
                    "started": None,
                    "completed": None,
                    "failed": None,
                    "dead_lettered": None,
                    "queued": None,
                    "not_started": None,
                }
            )
    now = datetime.now(UTC)
    since = now - timedelta(hours=1)
    completed = await store.list_sagas(
        status=SagaStatus.COMPLETED, created_after=since, limit=_CHART_LIMIT
    )
    failed = [
        *await store.list_sagas(
            status=SagaStatus.COMPENSATED, created_after=since, limit=_CHART_LIMIT
        ),
        *await store.list_sagas(status=SagaStatus.FAILED, created_after=since, limit=_CHART_LIMIT),
    ]
    return {
        "rows": rows,
        "queue_depth": len(engine.state.queue) if running else None,
        "in_flight": metrics.in_flight if metrics is not None else None,
        "chart": per_minute_svg(
            now,
            [s.updated_at or s.created_at for s in completed],
            [s.updated_at or s.created_at for s in failed],
        ),
    }


def _saga_actions(status: SagaStatus) -> tuple[str, ...]:
    """The buttons a saga's page offers (the engines check again when they act)."""
    actions: list[str] = []
    if status in (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATED):
        actions.append("cancel")
    if status in (SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.CANCELLED):
        actions.append("resume")
    if status in TERMINAL_SAGA_STATUSES:
        actions.append("retry")
    return tuple(actions)


def _key_options(options: dict[str, Any]) -> str:
    keys = ("topic", "topics", "queue", "stream", "path", "method", "cron", "channel", "auth")
    shown = [f"{k}={options[k]!r}" for k in keys if k in options]
    return ", ".join(shown)[:200]


async def _sagas(ctx: _Context, request: Request) -> dict[str, Any]:
    query = request.query_params
    status_text = query.get("status", "")
    status = SagaStatus(status_text) if status_text in set(SagaStatus) else None
    trigger_id = query.get("trigger") or None
    age = query.get("age", "")
    created_after = datetime.now(UTC) - timedelta(minutes=_AGES[age]) if age in _AGES else None
    limit = max(1, min(_int(query.get("limit", PAGE_SIZE)), PAGE_SIZE))
    rows = await _store(ctx).list_sagas(
        status=status,
        trigger_id=trigger_id,
        created_after=created_after,
        after=query.get("after") or None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    filters = {"status": status_text if status else "", "trigger": trigger_id or "", "age": age}
    return {
        "rows": rows,
        "filters": filters,
        "statuses": [s.value for s in SagaStatus],
        "ages": list(_AGES),
        "next_after": rows[-1].saga_id if more and rows else None,
    }


async def _replay(ctx: _Context, record: Any) -> str:
    from sagaz.engine.replay import replay

    engine = ctx.engine
    try:
        outcome = await replay(
            _store(ctx),
            record,
            config=engine.config if engine is not None else None,
            sagas=list(engine.instances._given.values()) if engine is not None else (),
            saga_factory=engine.instances.factory if engine is not None else None,
        )
    except Exception as exc:  # shown to the operator; the dead letter stays
        logger.warning("dashboard replay of dead letter %s failed", record.id, exc_info=True)
        return f"not replayed ({type(exc).__name__}: {exc})"
    return str(outcome.status)
