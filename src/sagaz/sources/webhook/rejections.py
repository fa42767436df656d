"""Requests the webhook server refused: counted per reason, logged at a bounded rate.

A refused request (4xx, or 503 because the server is at its connection or request cap or the
trigger is paused) is
answered and counted, never stored: anyone who can reach the port can send them, so neither
the store nor the log may grow with their number. The counts are exported as
``sagaz_webhook_requests_rejected_total{reason, trigger}`` on ``/metrics``; the log gets one
line per reason at most every ``log_interval`` seconds, with the count since the previous one.

>>> rejections = RequestRejections(log_interval=60)
>>> rejections.count(RejectionReason.NOT_FOUND)
>>> rejections.total(RejectionReason.NOT_FOUND)
1
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["RejectionReason", "RequestRejections"]

logger = logging.getLogger(__name__)

_MAX_DETAIL = 200  # characters of a refusal's detail in the log


class RejectionReason(StrEnum):
    """Why the webhook server refused a request (the ``reason`` label of the counter)."""

    INVALID_BODY = "invalid_body"  # 400: bad JSON, validation error, the trigger method raised
    BAD_REQUEST = "bad_request"  # 400: malformed HTTP, bad Content-Length or Idempotency-Key
    UNAUTHORIZED = "unauthorized"  # 401: no credentials
    FORBIDDEN = "forbidden"  # 403: wrong credentials
    NOT_FOUND = "not_found"  # 404: no trigger at this path
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    TOO_LARGE = "too_large"  # 413: body larger than max_body_bytes
    HEADERS_TOO_LARGE = "headers_too_large"  # 431: request line + headers over the limit
    TOO_MANY_HEADERS = "too_many_headers"  # 431: more header fields than allowed
    TIMEOUT = "timeout"  # 408, or closed: headers or body not received in time
    OVERLOADED = "overloaded"  # 503: too many connections or requests at once
    PAUSED = "paused"  # 503: the trigger is paused (sagaz triggers pause)


@dataclass(slots=True)
class _LogWindow:
    logged_at: float
    suppressed: int = 0


class RequestRejections:
    """Counters of refused requests per (reason, trigger), and their rate-limited log.

    ``trigger`` is the trigger id when the request reached a trigger's route, else ``""``
    (an unknown path, or refused by the server before routing). Plain counters on one event
    loop: no lock. Memory is bounded by the reasons times the triggers.
    """

    def __init__(
        self, *, log_interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: seconds between two log lines of the same reason
        self.log_interval = log_interval
        #: (reason, trigger id or "") -> requests refused
        self.counts: Counter[tuple[str, ...]] = Counter()
        #: trigger id -> invalid requests not dead-lettered because the trigger's
        #: ``dead_letter_invalid_limit`` was reached in the current window
        self.dead_letters_capped: Counter[str] = Counter()
        self._clock = clock
        self._windows: dict[str, _LogWindow] = {}

    def count(self, reason: RejectionReason, trigger: str = "", detail: str = "") -> None:
        """Count one refused request; log it if this reason was not logged recently.

        ``detail`` (why, for the log) must hold no secret nor payload; it is cut short.
        """
        self.counts[(reason.value, trigger)] += 1
        self._log(reason.value, trigger, detail[:_MAX_DETAIL])

    def capped(self, trigger: str) -> None:
        """Count an invalid request of ``trigger`` not dead-lettered because of its cap."""
        self.dead_letters_capped[trigger] += 1
        self._log("dead_letter_invalid_limit", trigger, "the trigger's dead-letter cap is reached")

    def total(self, reason: RejectionReason | str) -> int:
        """Requests refused for ``reason``, over every trigger."""
        value = str(reason)
        return sum(n for (counted, _), n in self.counts.items() if counted == value)

    def flush(self) -> None:
        """Log what was counted but not logged yet (when the server stops)."""
        now = self._clock()
        for reason, window in self._windows.items():
            if window.suppressed:
                self._summary(reason, window, now)
        self._windows.clear()

    def _log(self, reason: str, trigger: str, detail: str) -> None:
        now = self._clock()
        window = self._windows.get(reason)
        if window is None:
            self._windows[reason] = _LogWindow(now)
            logger.warning(
                "webhook request refused (%s%s)%s; further ones are counted in "
                "sagaz_webhook_requests_rejected_total and logged at most every %.0f s",
                reason,
                f", trigger {trigger}" if trigger else "",
                f": {detail}" if detail else "",
                self.log_interval,
                extra={"source": "webhook", "reason": reason, "trigger": trigger},
            )
            return
        window.suppressed += 1
        if now - window.logged_at >= self.log_interval:
            self._summary(reason, window, now)

    @staticmethod
    def _summary(reason: str, window: _LogWindow, now: float) -> None:
        logger.warning(
            "webhook refused %d more request(s) (%s) in the last %.0f s",
            window.suppressed,
            reason,
            now - window.logged_at,
            extra={"source": "webhook", "reason": reason, "count": window.suppressed},
        )
        window.logged_at, window.suppressed = now, 0
