"""The webhook app's JSON responses, and the HTTP answer to each admission outcome.

The table of statuses is in :mod:`sagaz.sources.webhook.app`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from sagaz.events import AdmissionOutcome, AdmissionResult

__all__ = ["admission_response", "json_response", "unavailable_response"]

logger = logging.getLogger(__name__)


def admission_response(result: AdmissionResult, *, retry_after: int = 1) -> Response:
    """The HTTP answer to an :class:`~sagaz.events.AdmissionResult` (see the module table)."""
    outcome = result.outcome
    if outcome is AdmissionOutcome.ACCEPTED:
        return json_response(202, {"saga_id": result.saga_id, "status": "accepted"})
    if outcome is AdmissionOutcome.BUSY:
        return json_response(202, {"saga_id": result.saga_id, "status": "in_progress"})
    if outcome is AdmissionOutcome.DUPLICATE:
        return json_response(200, {"saga_id": result.saga_id, "status": "duplicate"})
    if outcome is AdmissionOutcome.FILTERED:
        return json_response(200, {"status": "filtered"})
    if outcome is AdmissionOutcome.INVALID:
        return json_response(
            400, {"error": result.error or "invalid event", "details": result.details}
        )
    if outcome in (AdmissionOutcome.DROPPED, AdmissionOutcome.REJECTED):
        # REJECTED with no reason: not the queue's doing (the store is away, or we stop)
        busy = outcome is AdmissionOutcome.DROPPED or result.reason is not None
        return unavailable_response(
            retry_after, "too many events in flight, retry later" if busy else "retry later"
        )
    logger.error("unknown admission outcome %r", outcome)
    return json_response(500, {"error": "internal error"})


def json_response(status: int, content: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response (compact, UTF-8) with ``status`` and ``headers``."""
    # default=str: pydantic error details may carry exceptions or other non-JSON values
    body = json.dumps(content, default=str, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def unavailable_response(retry_after: int, error: str) -> Response:
    """503 with ``Retry-After`` and ``{"error": error}``."""
    return json_response(503, {"error": error}, {"Retry-After": str(retry_after)})
