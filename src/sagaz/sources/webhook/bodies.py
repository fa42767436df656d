"""Reading a webhook request's body within ``max_body_bytes``, and the 413 that refuses it.

A body whose ``Content-Length`` is over the limit is refused before it is read; one that grows
past it while streaming is refused then. Either way the 413 leaves at once and the rest of the
upload is read and dropped (at most :data:`MAX_DISCARD_BYTES`), never kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sagaz.sources.webhook.rejections import RejectionReason
from sagaz.sources.webhook.responses import json_response

__all__ = ["MAX_DISCARD_BYTES", "BodyTooLarge", "Refusal", "read_body"]

logger = logging.getLogger(__name__)

#: how much of an oversized body is read (and dropped) after the 413 before the connection closes
MAX_DISCARD_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused body: the response and how to count it."""

    response: Response
    reason: RejectionReason
    detail: str


class BodyTooLarge(Response):
    """413, sent at once; then the rest of the request body is read and dropped.

    The status line and JSON body leave before the upload ends, so a client that reads while
    it sends stops early. Dropping the rest (at most :data:`MAX_DISCARD_BYTES`, never kept)
    lets a client that only reads after sending still get the 413 instead of a reset
    connection; past that budget the connection is closed.
    """

    def __init__(self, limit: int, *, discard: bool) -> None:
        super().__init__(
            json.dumps({"error": f"request body is larger than {limit} bytes"}),
            status_code=413,
            headers={"Connection": "close"},
            media_type="application/json",
        )
        self.discard = discard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        discarded = 0
        while self.discard and discarded <= MAX_DISCARD_BYTES:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            discarded += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def read_body(
    request: Request, headers: Mapping[str, str], limit: int, log_extra: dict[str, Any]
) -> bytes | Refusal | Response:
    """The body, or the response refusing it; never holds more than ``limit`` + one chunk."""
    too_large = f"body larger than max_body_bytes={limit}"
    declared = headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            error = "invalid Content-Length header"
            return Refusal(json_response(400, {"error": error}), RejectionReason.BAD_REQUEST, error)
        if length > limit:
            logger.debug("webhook body refused by Content-Length", extra=log_extra)
            # with "Expect: 100-continue" the client waits for us and sends no body at all
            waits = "100-continue" in headers.get("expect", "").lower()
            refusal = BodyTooLarge(limit, discard=not waits)
            return Refusal(refusal, RejectionReason.TOO_LARGE, too_large)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                logger.debug("webhook body refused while streaming", extra=log_extra)
                refusal = BodyTooLarge(limit, discard=True)
                return Refusal(refusal, RejectionReason.TOO_LARGE, too_large)
    except ClientDisconnect:
        return json_response(
            400, {"error": "client disconnected"}
        )  # nobody reads it; ends the task
    return bytes(body)
