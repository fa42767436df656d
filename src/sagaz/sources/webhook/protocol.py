"""The HTTP/1.1 protocol of the built-in webhook server: uvicorn's h11 protocol, with limits.

uvicorn closes idle keep-alive connections, but not a client that sends its request slowly
(slowloris) nor one that connects and sends nothing, and its ``limit_concurrency`` counts
connections and requests together. :class:`LimitedH11Protocol` adds, per connection:

* a deadline for the request line and headers (``webhook_header_timeout``), from the
  connection's opening or the request's first byte: then 408 and close (a connection that
  sent nothing is closed without an answer);
* a deadline for the body (``webhook_body_timeout``) from the end of the headers: then 408
  unless a response has started, and close;
* caps: open connections (``webhook_max_connections``) and requests in flight
  (``webhook_max_concurrent_requests``) → 503 + ``Retry-After``; bytes of request line and
  headers (``webhook_max_header_bytes``) and header fields (``webhook_max_headers``) → 431;
  malformed HTTP → 400.

Each refusal is counted in :class:`~sagaz.sources.webhook.rejections.RequestRejections`
(which logs at a bounded rate; uvicorn's own warning per malformed request is not emitted),
and the connection is closed gracefully: the answer is written, the write side shut, what the
client still sends is read and dropped for up to :data:`LINGER_SECONDS`, then the socket
closes. The client so reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from sagaz.config import TriggerConfig
from sagaz.sources.webhook.rejections import RejectionReason, RequestRejections

__all__ = ["LINGER_SECONDS", "LimitedConfig", "LimitedH11Protocol", "ServerLimits"]

logger = logging.getLogger(__name__)

#: how long a refused connection is still read (and dropped) after its answer, at most
LINGER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The limits of the built-in server (the ``webhook_*`` fields of ``TriggerConfig``)."""

    max_connections: int = 1024
    max_concurrent_requests: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_header_bytes: int = 16384
    max_headers: int = 100

    @classmethod
    def from_config(cls, config: TriggerConfig) -> ServerLimits:
        """The limits set in ``config``."""
        return cls(
            max_connections=config.webhook_max_connections,
            max_concurrent_requests=config.webhook_max_concurrent_requests,
            header_timeout=config.webhook_header_timeout,
            body_timeout=config.webhook_body_timeout,
            keep_alive_timeout=config.webhook_keep_alive_timeout,
            max_header_bytes=config.webhook_max_header_bytes,
            max_headers=config.webhook_max_headers,
        )


class LimitedConfig(uvicorn.Config):
    """uvicorn's config, serving with :class:`LimitedH11Protocol` under ``limits``."""

    def __init__(
        self,
        app: Any,
        *,
        limits: ServerLimits,
        rejections: RequestRejections,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            app,
            http=LimitedH11Protocol,
            h11_max_incomplete_event_size=limits.max_header_bytes,
            timeout_keep_alive=limits.keep_alive_timeout,
            **kwargs,
        )
        self.limits = limits
        self.rejections = rejections


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int | None  # None: close without an answer
    reason: RejectionReason
    message: str


class _GuardedConnection(h11.Connection):
    """h11's server connection that never raises into uvicorn.

    A protocol error, or a request head that ``check`` refuses, becomes :attr:`refusal` and
    ``PAUSED`` (uvicorn then stops reading); the protocol answers it after uvicorn's loop.
    """

    def __init__(
        self, max_header_bytes: int, check: Callable[[h11.Request], _Refusal | None]
    ) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.check = check
        self.refusal: _Refusal | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.refusal is not None:
            return h11.PAUSED
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                self.refusal = _Refusal(
                    431,
                    RejectionReason.HEADERS_TOO_LARGE,
                    f"request line and headers are larger than {self.max_header_bytes} bytes",
                )
            else:
                self.refusal = _Refusal(
                    400, RejectionReason.BAD_REQUEST, f"invalid HTTP request: {exc}"
                )
            return h11.PAUSED
        if isinstance(event, h11.Request):
            self.refusal = self.check(event)
            if self.refusal is not None:
                return h11.PAUSED
        return event


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and caps of the module docstring."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, LimitedConfig):
            raise TypeError("LimitedH11Protocol needs a LimitedConfig (limits and counters)")
        self.limits = config.limits
        self.rejections = config.rejections
        self._guard = _GuardedConnection(self.limits.max_header_bytes, self._check_request)
        self.conn = self._guard
        self._over_capacity = False
        self._deadline: asyncio.TimerHandle | None = None
        #: ("head" | "body", the request it times): the same key never re-arms the deadline
        self._deadline_key: tuple[str, object] | None = None
        self._head_started = False  # a byte of the awaited request head arrived
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_capacity = len(self.connections) > self.limits.max_connections
        self._update_deadline()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: read and drop (see LINGER_SECONDS)
        super().data_received(data)
        self._after_events(received=bool(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    # -- uvicorn hooks ----------------------------------------------------------------------
    def on_response_complete(self) -> None:
        super().on_response_complete()  # may parse a pipelined request
        if not self._refused:
            self._after_events()

    def shutdown(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().shutdown()

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn warns once per request with "Upgrade:"; the request is served as plain HTTP
        logger.debug("webhook request asked for an unsupported protocol upgrade")

    # -- limits -----------------------------------------------------------------------------
    def _check_request(self, request: h11.Request) -> _Refusal | None:
        limits = self.limits
        # h11 enforces the size only on a head still incomplete; one that arrived whole in a
        # single read is measured here ("METHOD target HTTP/1.1\r\n" + "name: value\r\n"...)
        size = len(request.method) + len(request.target) + 12
        size += sum(len(name) + len(value) + 4 for name, value in request.headers)
        if size > limits.max_header_bytes:
            return _Refusal(
                431,
                RejectionReason.HEADERS_TOO_LARGE,
                f"request line and headers are larger than {limits.max_header_bytes} bytes",
            )
        if len(request.headers) > limits.max_headers:
            return _Refusal(
                431,
                RejectionReason.TOO_MANY_HEADERS,
                f"more than {limits.max_headers} header fields",
            )
        if self._over_capacity:
            return _Refusal(
                503,
                RejectionReason.OVERLOADED,
                f"more than {limits.max_connections} connections are open",
            )
        if len(self.tasks) >= limits.max_concurrent_requests:
            return _Refusal(
                503,
                RejectionReason.OVERLOADED,
                f"{limits.max_concurrent_requests} requests are in flight",
            )
        return None

    def _after_events(self, *, received: bool = False) -> None:
        refusal = self._guard.refusal
        if refusal is not None:
            self._refuse(refusal)
            return
        self._update_deadline()
        if received and self._deadline_key is not None and self._deadline_key[0] == "head":
            self._head_started = True

    def _update_deadline(self) -> None:
        """Arm the deadline of the phase the connection is in (once per request and phase)."""
        state = self.conn.their_state
        key: tuple[str, object] | None = None
        delay = 0.0
        if self.transport.is_closing():
            pass
        elif state is h11.IDLE and self.timeout_keep_alive_task is None:
            # awaiting a request head (between requests, uvicorn's keep-alive timer runs)
            key, delay = ("head", self.cycle), self.limits.header_timeout
        elif state is h11.SEND_BODY and self.cycle is not None:
            key, delay = ("body", self.cycle), self.limits.body_timeout
        if key == self._deadline_key:
            return
        self._cancel_deadline()
        if key is not None:
            self._deadline_key = key
            self._head_started = False
            self._deadline = self.loop.call_later(delay, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._deadline_key = None

    def _deadline_passed(self) -> None:
        key = self._deadline_key
        self._deadline = self._deadline_key = None
        if key is None or self._refused or self.transport.is_closing():
            return
        limits = self.limits
        if key[0] == "head":
            message = f"request headers not received within {limits.header_timeout:g} s"
            self._refuse(
                _Refusal(408 if self._head_started else None, RejectionReason.TIMEOUT, message)
            )
            return
        message = f"request body not received within {limits.body_timeout:g} s"
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app reads http.disconnect; its answer goes nowhere
            cycle.message_event.set()
        self._refuse(_Refusal(None if answered else 408, RejectionReason.TIMEOUT, message))

    def _refuse(self, refusal: _Refusal) -> None:
        """Count, answer (unless ``status`` is None) and close gracefully."""
        self._refused = True
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        self.rejections.count(refusal.reason, detail=refusal.message)
        transport = self.transport
        if transport.is_closing():
            return
        if refusal.status is not None:
            transport.write(_response(refusal.status, refusal.message))
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()  # read and drop what is still coming, then close
            self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def _response(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` response with a JSON ``{"error": message}`` body."""
    body = json.dumps({"error": message}).encode()
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if status == 503:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
