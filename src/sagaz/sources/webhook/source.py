"""``@trigger(source="webhook", path=..., method=..., auth=...)``: events from HTTP requests.

All webhook triggers of an engine share one ASGI app (:class:`~sagaz.sources.webhook.app.
WebhookApp`) kept in ``SourceContext.shared["webhook"]``. ``start_triggers()`` serves it with
uvicorn on ``TriggerConfig.webhook_host``/``webhook_port`` (port 0 picks a free one); or mount it
in your own Starlette/FastAPI app and sagaz listens on no port of its own::

    app = Starlette(routes=[Mount("/hooks", app=sagaz.webhook_app())])

Options: :class:`~sagaz.triggers.options.webhook.WebhookOptions` (checked when the class is
defined; this module imports neither starlette nor uvicorn until :func:`create`).

The trigger method receives a :class:`~sagaz.events.WebhookRequest`. The event's identity (its
dedup key unless the trigger sets ``idempotency_key``) is the ``Idempotency-Key`` header when
the request has one; without it each request is its own event (two identical bodies start two
sagas), unless the trigger sets ``dedup="content"``: then the key is
``"sha256:" + sha256(method, path, query string, body)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext, SourceCounter
from sagaz.exceptions import ConfigurationError
from sagaz.sources.webhook.auth import BearerAuth, HmacAuth
from sagaz.triggers.options.webhook import (
    DEFAULT_DEAD_LETTER_INVALID_LIMIT,
    DEFAULT_DEAD_LETTER_INVALID_WINDOW,
    DEFAULT_MAX_BODY_BYTES,
    WebhookOptions,
    compile_path,
)

if TYPE_CHECKING:
    from sagaz.sources.webhook.app import WebhookApp, WebhookRoute
    from sagaz.sources.webhook.auth import WebhookAuth
    from sagaz.sources.webhook.server import WebhookServer

__all__ = [
    "DEFAULT_DEAD_LETTER_INVALID_LIMIT",
    "DEFAULT_DEAD_LETTER_INVALID_WINDOW",
    "DEFAULT_MAX_BODY_BYTES",
    "SHARED_KEY",
    "WebhookSource",
    "create",
    "webhook_app",
    "webhook_server",
]

logger = logging.getLogger(__name__)

#: the key of the engine's :class:`WebhookServer` in ``SourceContext.shared``
SHARED_KEY = "webhook"


def create(options: WebhookOptions, ctx: SourceContext) -> WebhookSource:
    """Build the source of one webhook trigger and register its route in the engine's app.

    Raises :class:`~sagaz.exceptions.ConfigurationError` when the auth has no tokens/secret or
    when another trigger already serves the same method and path.
    """
    require_extra("webhook", "starlette")
    require_extra("webhook", "uvicorn")
    from sagaz.sources.webhook.app import WebhookRoute

    server = webhook_server(ctx.shared)
    server.config = ctx.config
    server.app.rejections.log_interval = ctx.config.webhook_rejection_log_seconds
    route = WebhookRoute(
        trigger_id=ctx.trigger_id,
        method=options.method,
        path=options.path,
        pattern=compile_path(options.path),
        auth=_build_auth(options, ctx),
        max_body_bytes=options.max_body_bytes,
        retry_after=options.retry_after,
        dead_letter_invalid=options.dead_letter_invalid,
        dead_letter_invalid_limit=options.dead_letter_invalid_limit,
        dead_letter_invalid_window=options.dead_letter_invalid_window,
        clock=ctx.clock,
        report_error=ctx.report_error,
    )
    server.app.add_route(route)
    return WebhookSource(
        route,
        server,
        drain_timeout=ctx.config.shutdown_timeout,
        metrics=ctx.metrics_renderer,
        store_available=ctx.store_available,
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
    ``GET /metrics`` with while the source holds it; ``store_available``
    (``SourceContext.store_available``) is what its ``GET /readyz`` asks of the engine's store.
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
        store_available: Callable[[], bool] | None = None,
    ) -> None:
        self.route = route
        self.server = server
        self.drain_timeout = drain_timeout
        self.metrics = metrics
        self.store_available = store_available
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
        if self.store_available is not None:
            self.server.app.store_available = self.store_available
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

    async def pause(self) -> None:
        """Answer 503 + ``Retry-After`` (the trigger's ``retry_after``) until :meth:`resume`;
        requests already admitted finish. The server stays ready (``/readyz``): other
        triggers on it still answer."""
        self.route.paused = True

    async def resume(self) -> None:
        """Admit requests again."""
        self.route.paused = False

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
