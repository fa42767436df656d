"""The uvicorn server of the webhook triggers: one per engine, shared by all of them.

:class:`WebhookServer` lives in ``SourceContext.shared["webhook"]``. Each running webhook source
holds it; uvicorn listens on ``TriggerConfig.webhook_host``/``webhook_port`` (port 0 picks a free
port, see :attr:`WebhookServer.port`) while anybody holds it, and stops with the last release.
When the app was mounted in the host application (:meth:`WebhookServer.mount`), sagaz listens on
no port of its own.

uvicorn serves with :class:`~sagaz.sources.webhook.protocol.LimitedH11Protocol`: the
``webhook_*`` limits of ``TriggerConfig`` (connections, requests in flight, header and body
deadlines, header size and count, keep-alive) apply to the built-in server only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator

import uvicorn

from sagaz.config import TriggerConfig
from sagaz.exceptions import SagazError
from sagaz.sources.webhook.app import WebhookApp
from sagaz.sources.webhook.protocol import LimitedConfig, ServerLimits

__all__ = ["WebhookServer", "WebhookServerError"]

logger = logging.getLogger(__name__)

#: seconds uvicorn waits for open connections when it stops (routes are drained before)
_SHUTDOWN_GRACE_SECONDS = 5


class WebhookServerError(SagazError, OSError):
    """The webhook server could not listen, or stopped while triggers still needed it."""


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn that leaves SIGINT/SIGTERM to the host application (the engine, the CLI)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebhookServer:
    """The :class:`WebhookApp` of one engine and, unless mounted, the uvicorn that serves it.

    Kept in ``SourceContext.shared["webhook"]``: the first webhook source creates it. Each
    running source holds it (:meth:`acquire`); uvicorn listens while anybody holds it and stops
    when the last holder releases it.

    >>> server = WebhookServer()
    >>> app = server.mount()  # serve it inside your own ASGI app; sagaz then listens on no port
    """

    def __init__(self, app: WebhookApp | None = None) -> None:
        self.app = app if app is not None else WebhookApp()
        #: True once :meth:`mount` was called: the app is served by the host application
        self.mounted = False
        #: host and port come from here (the engine's config; set by ``create``)
        self.config: TriggerConfig | None = None
        self._holders: dict[object, Callable[[BaseException], None]] = {}
        self._lock = asyncio.Lock()
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._host: str | None = None
        self._port: int | None = None
        self._stopping = False

    def mount(self) -> WebhookApp:
        """The app, for mounting in an existing ASGI app; sagaz will then not start uvicorn."""
        self.mounted = True
        return self.app

    @property
    def serving(self) -> bool:
        """True while uvicorn runs."""
        return self._task is not None and not self._task.done()

    @property
    def port(self) -> int | None:
        """The bound port (the real one when ``webhook_port=0``), or ``None`` when not serving."""
        return self._port if self.serving else None

    @property
    def url(self) -> str | None:
        """``http://host:port`` while serving, else ``None``."""
        port = self.port
        if port is None or self._host is None:
            return None
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}"

    async def acquire(self, holder: object, on_failure: Callable[[BaseException], None]) -> None:
        """Hold the server open for ``holder``; starts uvicorn if needed (not when mounted).

        ``on_failure(exc)`` is called if uvicorn dies while ``holder`` still holds it.
        Raises :class:`WebhookServerError` when the address cannot be bound.
        """
        async with self._lock:
            self._holders[holder] = on_failure
            if self.mounted or self.serving:
                return
            try:
                await self._start()
            except BaseException:
                del self._holders[holder]
                raise

    async def release(self, holder: object) -> None:
        """Stop holding the server; the last release stops uvicorn and forgets closed routes
        and the engine's metrics."""
        async with self._lock:
            self._holders.pop(holder, None)
            if self._holders:
                return
            self.app.discard_closed()
            self.app.metrics = None
            await self._stop()

    async def close(self) -> None:
        """Stop uvicorn whoever still holds it (the engine's final cleanup). Idempotent."""
        async with self._lock:
            self._holders.clear()
            self.app.discard_closed()
            self.app.metrics = None
            await self._stop()

    async def _start(self) -> None:
        config = self.config if self.config is not None else TriggerConfig()
        sock = await _listen(config.webhook_host, config.webhook_port)
        host, port = sock.getsockname()[:2]
        server = _EmbeddedUvicorn(
            LimitedConfig(
                self.app,
                limits=ServerLimits.from_config(config),
                rejections=self.app.rejections,
                host=config.webhook_host,
                port=port,
                log_config=None,  # leave the host application's logging alone
                access_log=False,
                lifespan="off",
                ws="none",
                server_header=False,
                timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
            )
        )
        self._uvicorn, self._host, self._port, self._stopping = server, host, port, False
        self._task = asyncio.create_task(_serve(server, sock), name="sagaz-webhook-server")
        self._task.add_done_callback(self._on_done)
        logger.info(
            "webhook server listening on %s",
            self.url,
            extra={"source": "webhook", "host": host, "port": port},
        )

    async def _stop(self) -> None:
        task, server = self._task, self._uvicorn
        if task is None or server is None:
            return
        self._stopping = True
        server.should_exit = True
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._task = self._uvicorn = None
            self.app.rejections.flush()
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "webhook server failed while stopping",
                exc_info=task.exception(),
                extra={"source": "webhook"},
            )
        logger.info("webhook server stopped", extra={"source": "webhook", "port": self._port})

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        error: BaseException = WebhookServerError("the webhook server stopped unexpectedly")
        if not task.cancelled() and task.exception() is not None:
            error = task.exception() or error
        logger.error(
            "webhook server stopped unexpectedly", exc_info=error, extra={"source": "webhook"}
        )
        for on_failure in list(self._holders.values()):
            on_failure(error)


async def _serve(server: _EmbeddedUvicorn, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process on startup failures; we must not
        raise WebhookServerError(f"uvicorn could not start (exit code {exc.code})") from None
    finally:
        sock.close()


async def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that errors are ours and port 0 is known at once."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)  # connections queue here until uvicorn accepts them
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise WebhookServerError(
            f"cannot listen on {host}:{port} for webhook triggers ({exc.strerror or exc}); "
            "set SAGAZ_WEBHOOK_PORT to a free port (0 picks one) or SAGAZ_WEBHOOK_HOST, "
            "or mount sagaz.webhook_app() in your own ASGI app"
        ) from exc
    return sock
