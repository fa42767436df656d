"""``@trigger(source="webhook", path=..., method=..., auth=...)``: events from HTTP requests.

All webhook triggers of an engine share one ASGI app (:class:`~sagaz.sources.webhook.app.
WebhookApp`) kept in ``SourceContext.shared["webhook"]``. ``start_triggers()`` serves it with
uvicorn on ``TriggerConfig.webhook_host``/``webhook_port`` (port 0 picks a free one); or mount it
in your own Starlette/FastAPI app and sagaz listens on no port of its own::

    app = Starlette(routes=[Mount("/hooks", app=sagaz.webhook_app())])

Options (checked when the class is defined; this module imports neither starlette nor uvicorn
until :func:`create`):

=================  ==========================================================================
``path``           required; starts with ``/``; ``{name}`` segments become ``path_params``
``method``         ``POST`` (default), ``GET``, ``PUT``, ``PATCH``, ``DELETE``, ``HEAD``,
                   ``OPTIONS``
``auth``           ``None`` (default), ``"bearer"`` or ``"hmac"``
``tokens``         bearer tokens; default ``TriggerConfig.webhook_tokens``
                   (``SAGAZ_WEBHOOK_TOKENS``)
``secret``         HMAC secret; default ``TriggerConfig.webhook_hmac_secret``
``signature_header``  header of the ``sha256=<hex>`` signature; default ``X-Hub-Signature-256``
``max_body_bytes`` default 1 MiB; larger bodies get 413 and are never read whole
``retry_after``    seconds in the ``Retry-After`` header of a 503; default 1
``dead_letter_invalid``  ``False`` (default): an invalid request (bad JSON, validation error,
                   the trigger method raised) is answered 400, counted and logged, not stored;
                   ``True``: it is also stored as a dead letter, within the cap below
``dead_letter_invalid_limit``  at most this many such dead letters per window; default 100
                   (more are counted in ``sagaz_webhook_invalid_dead_letters_capped_total``)
``dead_letter_invalid_window``  the cap's window in seconds; default 60
=================  ==========================================================================

The trigger method receives a :class:`~sagaz.events.WebhookRequest`. The event's identity (its
dedup key unless the trigger sets ``idempotency_key``) is the ``Idempotency-Key`` header when
the request has one; without it each request is its own event (two identical bodies start two
sagas), unless the trigger sets ``dedup="content"``: then the key is
``"sha256:" + sha256(method, path, query string, body)``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext, SourceCounter
from sagaz.exceptions import ConfigurationError
from sagaz.sources.webhook.auth import DEFAULT_SIGNATURE_HEADER, BearerAuth, HmacAuth

if TYPE_CHECKING:
    from sagaz.sources.webhook.app import WebhookApp, WebhookRoute
    from sagaz.sources.webhook.auth import WebhookAuth
    from sagaz.sources.webhook.server import WebhookServer

__all__ = [
    "DEFAULT_DEAD_LETTER_INVALID_LIMIT",
    "DEFAULT_DEAD_LETTER_INVALID_WINDOW",
    "DEFAULT_MAX_BODY_BYTES",
    "HTTP_METHODS",
    "OPTIONS",
    "REQUIRED",
    "RESERVED_PATHS",
    "SHARED_KEY",
    "WebhookOptions",
    "WebhookSource",
    "compile_path",
    "create",
    "parse_options",
    "validate",
    "webhook_app",
    "webhook_server",
]

logger = logging.getLogger(__name__)

OPTIONS = frozenset(
    {
        "path",
        "method",
        "auth",
        "tokens",
        "secret",
        "signature_header",
        "max_body_bytes",
        "retry_after",
        "dead_letter_invalid",
        "dead_letter_invalid_limit",
        "dead_letter_invalid_window",
    }
)
REQUIRED = frozenset({"path"})

#: the key of the engine's :class:`WebhookServer` in ``SourceContext.shared``
SHARED_KEY = "webhook"
#: default ``max_body_bytes``: 1 MiB
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: default ``dead_letter_invalid_limit``: invalid requests kept per window and trigger
DEFAULT_DEAD_LETTER_INVALID_LIMIT = 100
#: default ``dead_letter_invalid_window``, in seconds
DEFAULT_DEAD_LETTER_INVALID_WINDOW = 60.0
#: paths the app answers itself; no trigger may use them
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_PARAM = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """The webhook options of one trigger, checked and normalised by :func:`parse_options`."""

    path: str
    method: str = "POST"
    auth: Literal["bearer", "hmac"] | None = None
    tokens: tuple[str, ...] = ()
    secret: str | bytes | None = None
    signature_header: str = DEFAULT_SIGNATURE_HEADER
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after: int = 1
    dead_letter_invalid: bool = False
    dead_letter_invalid_limit: int = DEFAULT_DEAD_LETTER_INVALID_LIMIT
    dead_letter_invalid_window: float = DEFAULT_DEAD_LETTER_INVALID_WINDOW


def compile_path(path: str) -> re.Pattern[str]:
    """The regex of a path template: each ``{name}`` matches one non-empty segment.

    >>> compile_path("/orders/{order_id}").fullmatch("/orders/42").groupdict()
    {'order_id': '42'}
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"webhook option path={path!r} must start with '/' (e.g. path='/orders')")
    if "?" in path or "#" in path:
        raise ValueError(
            f"webhook option path={path!r} must not hold a query or fragment; query parameters "
            "arrive in WebhookRequest.query_params"
        )
    if path in RESERVED_PATHS:
        raise ValueError(
            f"webhook option path={path!r} is reserved for the server itself "
            f"({', '.join(sorted(RESERVED_PATHS))}); choose another path"
        )
    regex, names, position = "", set[str](), 0
    for found in _PARAM.finditer(path):
        name = found.group(1)
        if not name.isidentifier() or name in names:
            problem = "is repeated" if name in names else "is not a valid identifier"
            raise ValueError(
                f"webhook option path={path!r}: parameter {{{name}}} {problem}; "
                "write parameters as {name}, each name once"
            )
        names.add(name)
        regex += re.escape(path[position : found.start()]) + f"(?P<{name}>[^/]+)"
        position = found.end()
    rest = path[position:]
    if any("{" in literal or "}" in literal for literal in _PARAM.split(path)[::2]):
        raise ValueError(
            f"webhook option path={path!r} has an unbalanced brace; write parameters as {{name}}"
        )
    return re.compile(regex + re.escape(rest))


def parse_options(options: Mapping[str, Any]) -> WebhookOptions:
    """Check the webhook options of a trigger; raise ``ValueError`` naming the bad option."""
    if "path" not in options:
        raise ValueError("webhook triggers need path= (e.g. path='/orders/{order_id}')")
    path = options["path"]
    compile_path(path)

    method = options.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise ValueError(
            f"webhook option method={method!r} is not an HTTP method; use one of "
            f"{', '.join(sorted(HTTP_METHODS))}"
        )

    auth = options.get("auth")
    if auth not in (None, "bearer", "hmac"):
        raise ValueError(f"webhook option auth={auth!r} is unknown; use None, 'bearer' or 'hmac'")

    tokens = _tokens(options.get("tokens"))
    if tokens and auth != "bearer":
        raise ValueError(
            "webhook option tokens= is set but auth is not 'bearer'; add auth='bearer'"
        )

    secret = options.get("secret")
    if secret is not None:
        if not isinstance(secret, str | bytes) or not secret:
            raise ValueError("webhook option secret= must be a non-empty str or bytes")
        if auth != "hmac":
            raise ValueError(
                "webhook option secret= is set but auth is not 'hmac'; add auth='hmac'"
            )

    signature_header = options.get("signature_header", DEFAULT_SIGNATURE_HEADER)
    if not isinstance(signature_header, str) or not _HEADER_NAME.match(signature_header):
        raise ValueError(
            f"webhook option signature_header={signature_header!r} is not a valid header name"
        )
    if "signature_header" in options and auth != "hmac":
        raise ValueError(
            "webhook option signature_header= is set but auth is not 'hmac'; add auth='hmac'"
        )

    max_body_bytes = options.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    if (
        not isinstance(max_body_bytes, int)
        or isinstance(max_body_bytes, bool)
        or max_body_bytes < 1
    ):
        raise ValueError(
            f"webhook option max_body_bytes={max_body_bytes!r} must be a positive int (bytes)"
        )

    retry_after = options.get("retry_after", 1)
    if (
        not isinstance(retry_after, int | float)
        or isinstance(retry_after, bool)
        or not math.isfinite(retry_after)
        or retry_after < 0
    ):
        raise ValueError(
            f"webhook option retry_after={retry_after!r} must be a number of seconds >= 0"
        )

    dead_letter_invalid = options.get("dead_letter_invalid", False)
    if not isinstance(dead_letter_invalid, bool):
        raise ValueError(
            f"webhook option dead_letter_invalid={dead_letter_invalid!r} must be True or False"
        )
    limit = options.get("dead_letter_invalid_limit", DEFAULT_DEAD_LETTER_INVALID_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(
            f"webhook option dead_letter_invalid_limit={limit!r} must be a positive int "
            "(dead letters of invalid requests per window)"
        )
    window = options.get("dead_letter_invalid_window", DEFAULT_DEAD_LETTER_INVALID_WINDOW)
    if (
        not isinstance(window, int | float)
        or isinstance(window, bool)
        or not math.isfinite(window)
        or window <= 0
    ):
        raise ValueError(
            f"webhook option dead_letter_invalid_window={window!r} must be a number of seconds > 0"
        )
    capped = ("dead_letter_invalid_limit", "dead_letter_invalid_window")
    if not dead_letter_invalid and any(name in options for name in capped):
        raise ValueError(
            "webhook options dead_letter_invalid_limit=/dead_letter_invalid_window= are set "
            "but dead_letter_invalid is not; add dead_letter_invalid=True"
        )

    return WebhookOptions(
        path=path,
        method=method.upper(),
        auth=auth,
        tokens=tokens,
        secret=secret,
        signature_header=signature_header,
        max_body_bytes=max_body_bytes,
        retry_after=math.ceil(retry_after),
        dead_letter_invalid=dead_letter_invalid,
        dead_letter_invalid_limit=limit,
        dead_letter_invalid_window=float(window),
    )


def _tokens(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, Sequence)
        or not value
        or not all(isinstance(t, str) and t for t in value)
    ):
        raise ValueError("webhook option tokens= must be a non-empty str or a list of them")
    return tuple(value)


def validate(options: Mapping[str, Any]) -> None:
    """Definition-time checks (``ValueError`` naming the option); imports no web framework.

    Whether ``auth="bearer"``/``"hmac"`` has its tokens/secret is checked by :func:`create`,
    because ``TriggerConfig`` may supply them.
    """
    parse_options(options)


def create(options: Mapping[str, Any], ctx: SourceContext) -> WebhookSource:
    """Build the source of one webhook trigger and register its route in the engine's app.

    Raises :class:`~sagaz.exceptions.ConfigurationError` when the auth has no tokens/secret or
    when another trigger already serves the same method and path.
    """
    opts = parse_options(options)
    require_extra("webhook", "starlette")
    require_extra("webhook", "uvicorn")
    from sagaz.sources.webhook.app import WebhookRoute

    server = webhook_server(ctx.shared)
    server.config = ctx.config
    server.app.rejections.log_interval = ctx.config.webhook_rejection_log_seconds
    route = WebhookRoute(
        trigger_id=ctx.trigger_id,
        method=opts.method,
        path=opts.path,
        pattern=compile_path(opts.path),
        auth=_build_auth(opts, ctx),
        max_body_bytes=opts.max_body_bytes,
        retry_after=opts.retry_after,
        dead_letter_invalid=opts.dead_letter_invalid,
        dead_letter_invalid_limit=opts.dead_letter_invalid_limit,
        dead_letter_invalid_window=opts.dead_letter_invalid_window,
        clock=ctx.clock,
        report_error=ctx.report_error,
    )
    server.app.add_route(route)
    return WebhookSource(
        route,
        server,
        drain_timeout=ctx.config.shutdown_timeout,
        metrics=ctx.metrics_renderer,
    )


def _build_auth(opts: WebhookOptions, ctx: SourceContext) -> WebhookAuth | None:
    if opts.auth == "bearer":
        tokens = opts.tokens or tuple(ctx.config.webhook_tokens)
        if not tokens:
            raise ConfigurationError(
                f"webhook trigger {ctx.trigger_id!r} has auth='bearer' but no tokens: pass "
                "tokens=[...] to @trigger or set SAGAZ_WEBHOOK_TOKENS (a JSON list)"
            )
        return BearerAuth(tokens)
    if opts.auth == "hmac":
        secret = opts.secret or ctx.config.webhook_hmac_secret
        if not secret:
            raise ConfigurationError(
                f"webhook trigger {ctx.trigger_id!r} has auth='hmac' but no secret: pass "
                "secret=... to @trigger or set SAGAZ_WEBHOOK_HMAC_SECRET"
            )
        return HmacAuth(secret, opts.signature_header)
    return None


def webhook_server(shared: MutableMapping[str, Any]) -> WebhookServer:
    """The engine's :class:`WebhookServer` in ``shared`` (``SourceContext.shared``), created on
    first use. It needs no running engine: the engine's sources find the same object later."""
    require_extra("webhook", "starlette")
    require_extra("webhook", "uvicorn")
    from sagaz.sources.webhook.server import WebhookServer

    server = shared.get(SHARED_KEY)
    if server is None:
        server = shared[SHARED_KEY] = WebhookServer()
    if not isinstance(server, WebhookServer):
        raise TypeError(
            f"shared[{SHARED_KEY!r}] holds a {type(server).__name__}, not a WebhookServer"
        )
    return server


def webhook_app(shared: MutableMapping[str, Any]) -> WebhookApp:
    """The ASGI app of the webhook triggers that use ``shared``, for mounting in your own app.

    Pass the dict the engine hands its sources as ``SourceContext.shared``. Once mounted, the
    engine does not start uvicorn: requests reach the triggers through your server. Call it
    before the engine starts its sources; if uvicorn already runs, it keeps serving until the
    webhook sources stop (the app then answers on both).

    >>> shared = {}
    >>> app = webhook_app(shared)  # doctest: +SKIP
    >>> Starlette(routes=[Mount("/hooks", app=app)])  # doctest: +SKIP
    """
    return webhook_server(shared).mount()


class WebhookSource(Source):
    """One webhook trigger: while :meth:`run` runs, its route admits requests through ``emit``.

    Not redeliverable: the caller gets its answer once the event is admitted. When the source
    stops, its route answers 503 + ``Retry-After`` at once, requests in flight finish (up to
    ``drain_timeout``), and the last webhook source to stop stops the server.

    ``metrics`` (the engine's ``SourceContext.metrics_renderer``) is what the server answers
    ``GET /metrics`` with while the source holds it.
    """

    kind = "webhook"
    redeliverable = False

    def __init__(
        self,
        route: WebhookRoute,
        server: WebhookServer,
        *,
        drain_timeout: float,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
    ) -> None:
        self.route = route
        self.server = server
        self.drain_timeout = drain_timeout
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._holding = False

    async def start(self) -> None:
        """Hold the shared server (binding the port if this is the first webhook source)."""
        if self._holding:
            return
        from sagaz.sources.webhook.app import RouteState

        if self.route.state is RouteState.CLOSED:
            self.route.state = RouteState.REGISTERED
        self.server.app.add_route(self.route)
        self._wake.clear()
        self._failure = None
        await self.server.acquire(self, self._on_server_failure)
        if self.metrics is not None:
            self.server.app.metrics = self.metrics
        self._holding = True
        await super().start()

    async def run(self, emit: Emit) -> None:
        """Admit requests through ``emit`` until cancelled or stopped."""
        await self.start()
        self.route.activate(emit)
        logger.debug(
            "webhook trigger accepting %s %s",
            self.route.method,
            self.route.path,
            extra={"trigger": self.route.trigger_id, "source": self.kind},
        )
        try:
            await self._wake.wait()
            if self._failure is not None:
                raise self._failure
        finally:
            await self._shutdown()

    async def stop(self) -> None:
        """Stop admitting (503 from now on), drain, release the server. Idempotent."""
        self._wake.set()
        await self._shutdown()

    def describe(self) -> dict[str, Any]:
        """Method, path, auth scheme and URL (never tokens or secrets)."""
        url = self.server.url
        return {
            "kind": self.kind,
            "method": self.route.method,
            "path": self.route.path,
            "auth": self.route.auth.scheme if self.route.auth is not None else None,
            "url": None if url is None else url + self.route.path,
            "mounted": self.server.mounted,
        }

    def counters(self) -> Sequence[SourceCounter]:
        """The shared server's refused requests, and invalid requests not dead-lettered."""
        rejections = self.server.app.rejections
        return (
            SourceCounter(
                "sagaz_webhook_requests_rejected",
                "Requests the webhook server refused (answered 4xx or 503, never stored), "
                "by reason and trigger.",
                ("reason", "trigger"),
                rejections.counts,
            ),
            SourceCounter(
                "sagaz_webhook_invalid_dead_letters_capped",
                "Invalid webhook requests not dead-lettered: the trigger's "
                "dead_letter_invalid_limit was reached.",
                ("trigger",),
                {(trigger,): n for trigger, n in rejections.dead_letters_capped.items()},
            ),
        )

    def _on_server_failure(self, error: BaseException) -> None:
        self._failure = error
        self._wake.set()

    async def _shutdown(self) -> None:
        self.route.close()
        try:
            async with asyncio.timeout(self.drain_timeout):
                await self.route.wait_idle()
        except TimeoutError:
            logger.warning(
                "webhook requests still in flight after %.1f s of shutdown",
                self.drain_timeout,
                extra={"trigger": self.route.trigger_id, "source": self.kind},
            )
        self._holding = False
        self._started = False
        await self.server.release(self)
