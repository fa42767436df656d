"""The one ASGI app that serves every webhook trigger of an engine, and the server around it.

* :class:`WebhookApp` is a plain ASGI app. Routes are added to it when the engine creates the
  webhook sources, so it exists before anything listens: mount it in Starlette/FastAPI with
  ``Mount("/hooks", app=sagaz.webhook_app())``.
* :class:`~sagaz.sources.webhook.server.WebhookServer` owns that app and, unless it was
  mounted, serves it with uvicorn while at least one webhook source runs.

Responses (the body is always JSON)::

    202 {"saga_id", "status": "accepted"}       event durably accepted
    202 {"saga_id", "status": "in_progress"}    same key already running elsewhere (BUSY)
    200 {"saga_id", "status": "duplicate"}      key already completed (repeated Idempotency-Key)
    200 {"status": "filtered"}                  the trigger method returned None
    400 {"error", "details"}                    invalid event (bad JSON, validation error)
                                                not stored (``dead_letter_invalid``: opt in)
    401 / 403                                   no credentials / wrong credentials
    404 / 405 (+ Allow)                         unknown path / wrong method
    413                                         body larger than max_body_bytes
    503 (+ Retry-After)                         queue full (dropped/rejected), store unavailable,
                                                starting, stopping, the trigger is paused
    500 {"error": "internal error"}             the pipeline raised (logged, never echoed)

Every refused request (4xx) is counted per reason in :attr:`WebhookApp.rejections` and logged
at a bounded rate (:mod:`sagaz.sources.webhook.rejections`); none is stored. An invalid event
reaches the pipeline (which validates it) but is dead-lettered only when its trigger sets
``dead_letter_invalid=True``, and then at most ``dead_letter_invalid_limit`` per
``dead_letter_invalid_window`` seconds.

Reading a body within ``max_body_bytes`` is :mod:`sagaz.sources.webhook.bodies`; the JSON
responses, :func:`admission_response` included, are :mod:`sagaz.sources.webhook.responses`.

Besides the triggers' routes: ``GET /healthz``, ``GET /readyz`` and ``GET /metrics`` (the
engine's Prometheus metrics, with the ``metrics`` extra; 404 with a hint without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sagaz.abc import Emit
from sagaz.clock import Clock, SystemClock
from sagaz.events import AdmissionOutcome, Delivery, EventMeta, WebhookRequest
from sagaz.exceptions import ConfigurationError
from sagaz.sources.webhook.auth import AuthFailure, BearerAuth, WebhookAuth
from sagaz.sources.webhook.bodies import MAX_DISCARD_BYTES, Refusal, read_body
from sagaz.sources.webhook.rejections import RejectionReason, RequestRejections
from sagaz.sources.webhook.responses import (
    admission_response,
    json_response,
    unavailable_response,
)
from sagaz.sources.webhook.source import (
    DEFAULT_DEAD_LETTER_INVALID_LIMIT,
    DEFAULT_DEAD_LETTER_INVALID_WINDOW,
    DEFAULT_MAX_BODY_BYTES,
)

__all__ = [
    "DASHBOARD_PATH",
    "MAX_DISCARD_BYTES",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "RouteState",
    "WebhookApp",
    "WebhookRoute",
    "admission_response",
]

logger = logging.getLogger(__name__)

#: where :attr:`WebhookApp.dashboard` is served
DASHBOARD_PATH = "/sagaz"
#: longest accepted ``Idempotency-Key`` header value
MAX_IDEMPOTENCY_KEY_LENGTH = 256

_PARAMETER = re.compile(r"\{[^{}]*\}")


class RouteState(StrEnum):
    """Lifecycle of a :class:`WebhookRoute`."""

    REGISTERED = "registered"  # created by the engine, its source not running yet → 503
    ACTIVE = "active"  # its source runs: requests are admitted
    CLOSED = "closed"  # its source stopped → 503 until the app drops it


@dataclass(eq=False)
class WebhookRoute:
    """One webhook trigger as the app serves it (built by the webhook source's ``create``)."""

    trigger_id: str
    method: str
    path: str  # the template, e.g. "/orders/{order_id}"
    pattern: re.Pattern[str]
    auth: WebhookAuth | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after: int = 1
    #: keep invalid events as dead letters (capped), instead of only answering 400
    dead_letter_invalid: bool = False
    dead_letter_invalid_limit: int = DEFAULT_DEAD_LETTER_INVALID_LIMIT
    dead_letter_invalid_window: float = DEFAULT_DEAD_LETTER_INVALID_WINDOW
    clock: Clock = field(default_factory=SystemClock)
    #: log + ``on_trigger_error`` listeners for an exception raised by ``emit``
    report_error: Callable[[BaseException], Awaitable[None]] | None = None
    state: RouteState = RouteState.REGISTERED
    #: the trigger is paused: requests get 503 + Retry-After (the route stays ready)
    paused: bool = False
    _emit: Emit | None = field(default=None, repr=False)
    _in_flight: int = field(default=0, repr=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _invalid_window: tuple[float, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def key(self) -> tuple[str, str]:
        """What two triggers may not share: the method and the path shape.

        ``/orders/{id}`` and ``/orders/{order_id}`` have the same shape.
        """
        return (self.method, _PARAMETER.sub("{}", self.path))

    @property
    def in_flight(self) -> int:
        """Requests of this route being handled right now."""
        return self._in_flight

    def activate(self, emit: Emit) -> None:
        """Start admitting requests through ``emit``."""
        self._emit = emit
        self.state = RouteState.ACTIVE

    def close(self) -> None:
        """Stop admitting requests: new ones get 503 + Retry-After. Idempotent."""
        self.state = RouteState.CLOSED
        self._emit = None

    async def wait_idle(self) -> None:
        """Wait until no request of this route is in flight."""
        await self._idle.wait()

    def take_dead_letter_slot(self) -> bool:
        """May one more invalid event of this route be dead-lettered now?

        Only with ``dead_letter_invalid``, and at most ``dead_letter_invalid_limit`` in each
        window of ``dead_letter_invalid_window`` seconds (fixed windows, on :attr:`clock`).
        """
        if not self.dead_letter_invalid:
            return False
        now = self.clock.monotonic()
        window = self._invalid_window
        if window is None or now - window[0] >= self.dead_letter_invalid_window:
            window = (now, 0)
        if window[1] >= self.dead_letter_invalid_limit:
            self._invalid_window = window
            return False
        self._invalid_window = (window[0], window[1] + 1)
        return True

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()


class WebhookApp:
    """The ASGI app of the webhook triggers; it needs no running server.

    Routes are added by the engine (through the webhook source's ``create``). Besides them it
    answers ``GET /healthz`` (200 whenever it answers at all) and ``GET /readyz`` (200 when every
    registered trigger is running, 503 while starting or stopping, and 503 while the engine's
    store is unavailable: :attr:`store_available`) and ``GET /metrics``
    (what :attr:`metrics` renders: the engine's ``SourceContext.metrics_renderer``, set by
    the webhook sources while they hold the server, when the ``metrics`` extra is installed).
    Refused requests are counted in :attr:`rejections`.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], WebhookRoute] = {}
        #: renders the Prometheus text and its content type (``None``: no metrics to serve)
        self.metrics: Callable[[], tuple[bytes, str]] | None = None
        #: whether the engine's store is reachable (``None``: not asked; set by the webhook
        #: sources while they hold the server): ``/readyz`` answers 503 while it is not
        self.store_available: Callable[[], bool] | None = None
        #: requests refused by this app (and by the built-in server's limits), per reason
        self.rejections = RequestRejections()
        #: an ASGI app served below ``/sagaz`` (the engine's dashboard), or ``None``
        self.dashboard: ASGIApp | None = None

    @property
    def routes(self) -> list[WebhookRoute]:
        """The routes, in registration order."""
        return list(self._routes.values())

    @property
    def ready(self) -> bool:
        """True when there are routes and all of them admit requests."""
        return bool(self._routes) and all(
            route.state is RouteState.ACTIVE for route in self._routes.values()
        )

    def add_route(self, route: WebhookRoute) -> None:
        """Register ``route``; a live route with the same method and path shape is an error."""
        existing = self._routes.get(route.key)
        if existing is not None and existing is not route:
            if existing.state is not RouteState.CLOSED:
                same = "" if existing.path == route.path else f" (as {existing.path})"
                raise ConfigurationError(
                    f"webhook triggers {existing.trigger_id!r} and {route.trigger_id!r} both "
                    f"serve {route.method} {route.path}{same}; give one of them another "
                    "path= or method="
                )
            del self._routes[route.key]
        self._routes[route.key] = route

    def _metrics(self) -> Response:
        if self.metrics is None:
            return json_response(
                404,
                {
                    "error": "no metrics here: they need a running engine and the metrics "
                    'extra (pip install "sagaz[metrics]")'
                },
            )
        body, content_type = self.metrics()
        return Response(body, 200, media_type=content_type)

    def discard_closed(self) -> None:
        """Forget the routes whose source stopped (their path answers 404 from now on)."""
        for key, route in list(self._routes.items()):
            if route.state is RouteState.CLOSED:
                del self._routes[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: refuse the handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        dashboard = self.dashboard
        if dashboard is not None:
            path = _route_path(scope)
            if path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/"):
                root = scope.get("root_path", "") + DASHBOARD_PATH
                await dashboard({**scope, "root_path": root}, receive, send)
                return
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path = _route_path(request.scope)
        method = request.method
        rejections = self.rejections
        if path in ("/healthz", "/readyz", "/metrics"):
            if method not in ("GET", "HEAD"):
                rejections.count(RejectionReason.METHOD_NOT_ALLOWED, detail=f"{method} {path}")
                return json_response(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD"})
            if path == "/healthz":
                return json_response(200, {"status": "ok"})
            if path == "/metrics":
                return self._metrics()
            return self._readiness()
        matches: list[tuple[WebhookRoute, dict[str, str]]] = []
        for route in self._routes.values():
            found = route.pattern.fullmatch(path)
            if found is not None:
                matches.append((route, found.groupdict()))
        if not matches:
            rejections.count(RejectionReason.NOT_FOUND, detail=f"{method} {path}")
            return json_response(404, {"error": "no webhook trigger at this path"})
        allowed = [(route, params) for route, params in matches if route.method == method]
        if not allowed:
            methods = ", ".join(sorted({route.method for route, _ in matches}))
            only = matches[0][0].trigger_id if len(matches) == 1 else ""
            rejections.count(RejectionReason.METHOD_NOT_ALLOWED, only, f"{method} {path}")
            return json_response(405, {"error": "method not allowed"}, {"Allow": methods})
        # "/orders/new" beats "/orders/{id}": the fewest parameters wins
        route, params = min(allowed, key=lambda item: len(item[1]))
        return await self._handle(route, params, request, path)

    def _readiness(self) -> Response:
        waiting = [r.trigger_id for r in self._routes.values() if r.state is not RouteState.ACTIVE]
        if self.store_available is not None and not self.store_available():
            # a load balancer sends the requests elsewhere: here they would get 503 anyway
            return json_response(
                503, {"status": "not ready", "store": "unavailable"}, {"Retry-After": "1"}
            )
        if self.ready:
            return json_response(200, {"status": "ready", "triggers": len(self._routes)})
        return json_response(503, {"status": "not ready", "waiting": waiting}, {"Retry-After": "1"})

    async def _handle(
        self, route: WebhookRoute, params: dict[str, str], request: Request, path: str
    ) -> Response:
        emit = route._emit
        if route.state is not RouteState.ACTIVE or emit is None:
            return unavailable_response(
                route.retry_after, "webhook trigger is starting or stopping"
            )
        if route.paused:
            self.rejections.count(
                RejectionReason.PAUSED, route.trigger_id, f"{request.method} {path}"
            )
            return unavailable_response(route.retry_after, "webhook trigger is paused, retry later")
        route._enter()
        try:
            return await _admit(route, emit, params, request, path, self.rejections)
        finally:
            route._leave()


async def _admit(
    route: WebhookRoute,
    emit: Emit,
    params: dict[str, str],
    request: Request,
    path: str,
    rejections: RequestRejections,
) -> Response:
    """Auth, body, identity, ``emit``: one request of an active route."""
    log_extra: dict[str, Any] = {"trigger": route.trigger_id, "source": "webhook", "path": path}
    trigger_id = route.trigger_id
    headers = _headers(request)
    if route.auth is not None:
        failure = route.auth.check_headers(headers)
        if failure is not None:
            return _refused(failure, trigger_id, rejections, log_extra)
    body = await read_body(request, headers, route.max_body_bytes, log_extra)
    if isinstance(body, Refusal):
        rejections.count(body.reason, trigger_id, body.detail)
        return body.response
    if isinstance(body, Response):
        return body
    if route.auth is not None:
        failure = route.auth.check_body(headers, body)
        if failure is not None:
            return _refused(failure, trigger_id, rejections, log_extra)

    key = headers.get("idempotency-key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            error = f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            rejections.count(RejectionReason.BAD_REQUEST, trigger_id, error)
            return json_response(400, {"error": error})
    query = request.scope.get("query_string", b"").decode("latin-1")
    # without a key the request is its own event, unless its trigger dedups by content
    content = None if key else _body_identity(request.method, path, query, body)
    message_id = key or uuid.uuid4().hex
    log_extra["message_id"] = message_id
    if isinstance(route.auth, BearerAuth):  # the credential was ours: keep it out of the store
        headers["authorization"] = "[redacted]"
    event = WebhookRequest(
        method=request.method,
        path=path,
        path_params=params,
        query_params=dict(request.query_params),
        headers=headers,
        body=body,
    )

    def keep_invalid() -> bool:  # asked by the pipeline only if the event is invalid
        if route.take_dead_letter_slot():
            return True
        if route.dead_letter_invalid:
            rejections.capped(trigger_id)
        return False

    delivery = Delivery(
        payload=event,
        meta=EventMeta(
            source="webhook",
            trigger=route.trigger_id,
            message_id=message_id,
            topic=route.path,
            headers=dict(headers),
            received_at=route.clock.now(),
        ),
        identity=key or "",
        content_identity=content,
        decoded=True,
        body=body,  # an envelope: a typed trigger method gets the body
        keep_invalid=keep_invalid,
        wait_for_store=False,  # the store is away: answer 503 + Retry-After, do not hang
    )
    try:
        result = await emit(delivery)
    except Exception as exc:  # CancelledError is a BaseException: it propagates
        logger.error("webhook request could not be admitted", exc_info=True, extra=log_extra)
        if route.report_error is not None:
            with contextlib.suppress(Exception):
                await route.report_error(exc)
        return json_response(500, {"error": "internal error", "request_id": message_id})
    response = admission_response(result, retry_after=route.retry_after)
    if result.outcome is AdmissionOutcome.INVALID:
        rejections.count(RejectionReason.INVALID_BODY, trigger_id, result.error or "")
    logger.debug(
        "webhook request admitted: %s",
        result.outcome,
        extra={**log_extra, "saga_id": result.saga_id, "status": response.status_code},
    )
    return response


# -- small pieces ----------------------------------------------------------------------------


def _refused(
    failure: AuthFailure,
    trigger_id: str,
    rejections: RequestRejections,
    log_extra: dict[str, Any],
) -> Response:
    logger.debug("webhook request refused: %s", failure.error, extra=log_extra)
    reason = RejectionReason.UNAUTHORIZED if failure.status == 401 else RejectionReason.FORBIDDEN
    rejections.count(reason, trigger_id, failure.error)
    return json_response(failure.status, {"error": failure.error}, failure.headers)


def _headers(request: Request) -> dict[str, str]:
    """Lower-case header names; a repeated header's values joined with ", "."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _body_identity(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode("latin-1")):
        digest.update(part)
        digest.update(b"\n")
    digest.update(body)
    return "sha256:" + digest.hexdigest()


def _route_path(scope: Scope) -> str:
    """The path below the mount point (``Mount`` keeps ``path`` and sets ``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
