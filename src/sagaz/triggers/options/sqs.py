"""Options of ``@trigger(source="sqs", ...)`` and their checks (no aiobotocore import).

>>> validate({"queue_url": "orders", "wait_time": 25})
Traceback (most recent call last):
...
ValueError: option wait_time=25 must be an integer in 0..20
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagaz.sources.sqs.settlement import MAX_BATCH

__all__ = [
    "MAX_MESSAGE_ATTRIBUTES",
    "MAX_VISIBILITY_TIMEOUT",
    "MAX_WAIT_TIME",
    "OPTIONS",
    "REQUIRED",
    "is_url",
    "validate",
]

#: the ``@trigger(source="sqs", ...)`` options
OPTIONS = frozenset(
    {
        "queue_url",
        "visibility_timeout",
        "wait_time",
        "max_messages",
        "endpoint_url",
        "region",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "dead_letter_topic",
    }
)
#: the options a ``source="sqs"`` trigger cannot do without
REQUIRED = frozenset({"queue_url"})

#: SQS limits: long-poll seconds, visibility seconds, attributes of a message
MAX_WAIT_TIME = 20
MAX_VISIBILITY_TIMEOUT = 43_200
MAX_MESSAGE_ATTRIBUTES = 10


def _bounded_int(options: Mapping[str, Any], name: str, low: int, high: int) -> None:
    value = options.get(name)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
    ):
        raise ValueError(f"option {name}={value!r} must be an integer in {low}..{high}")


def validate(options: Mapping[str, Any]) -> None:
    """Check the options of a ``source="sqs"`` trigger without importing aiobotocore."""
    queue_url = options.get("queue_url")
    if not isinstance(queue_url, str) or not queue_url:
        raise ValueError(f"option queue_url={queue_url!r} must be a queue URL (or queue name)")
    _bounded_int(options, "visibility_timeout", 1, MAX_VISIBILITY_TIMEOUT)
    _bounded_int(options, "wait_time", 0, MAX_WAIT_TIME)
    _bounded_int(options, "max_messages", 1, MAX_BATCH)
    endpoint_url = options.get("endpoint_url")
    if endpoint_url is not None and not is_url(endpoint_url):
        raise ValueError("option endpoint_url must be an http:// or https:// URL")
    for name in ("region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        value = options.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"option {name} must be a non-empty string")
    if ("aws_access_key_id" in options) != ("aws_secret_access_key" in options):
        raise ValueError("options aws_access_key_id and aws_secret_access_key go together")


def is_url(value: Any) -> bool:
    """Whether ``value`` is an http(s) URL (a queue URL), rather than a queue name."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))
