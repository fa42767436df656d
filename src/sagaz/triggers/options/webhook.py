"""``WebhookOptions``: the options of ``@trigger(source="webhook", ...)`` (no starlette import).

>>> WebhookOptions(path="/orders/{order_id}", method="put").method
'PUT'
>>> compile_path("/orders/{order_id}").fullmatch("/orders/42").groupdict()
{'order_id': '42'}

Whether ``auth="bearer"``/``"hmac"`` has its tokens/secret is checked when the source is built,
because ``TriggerConfig`` (``SAGAZ_WEBHOOK_TOKENS``, ``SAGAZ_WEBHOOK_HMAC_SECRET``) may supply them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sagaz.triggers.options.base import PositiveInt, SourceOptions

__all__ = [
    "DEFAULT_DEAD_LETTER_INVALID_LIMIT",
    "DEFAULT_DEAD_LETTER_INVALID_WINDOW",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_SIGNATURE_HEADER",
    "HTTP_METHODS",
    "RESERVED_PATHS",
    "WebhookOptions",
    "compile_path",
]

#: default ``max_body_bytes``: 1 MiB
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: default ``dead_letter_invalid_limit``: invalid requests kept per window and trigger
DEFAULT_DEAD_LETTER_INVALID_LIMIT = 100
#: default ``dead_letter_invalid_window``, in seconds
DEFAULT_DEAD_LETTER_INVALID_WINDOW = 60.0
#: default ``signature_header`` of ``auth="hmac"`` (GitHub's)
DEFAULT_SIGNATURE_HEADER = "X-Hub-Signature-256"
#: paths the app answers itself; no trigger may use them
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_PARAM = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def compile_path(path: str) -> re.Pattern[str]:
    """The regex of a path template: each ``{name}`` matches one non-empty segment."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"option path={path!r} must start with '/' (e.g. path='/orders')")
    if "?" in path or "#" in path:
        raise ValueError(
            f"option path={path!r} must not hold a query or fragment; query parameters "
            "arrive in WebhookRequest.query_params"
        )
    if path in RESERVED_PATHS:
        raise ValueError(
            f"option path={path!r} is reserved for the server itself "
            f"({', '.join(sorted(RESERVED_PATHS))}); choose another path"
        )
    regex, names, position = "", set[str](), 0
    for found in _PARAM.finditer(path):
        name = found.group(1)
        if not name.isidentifier() or name in names:
            problem = "is repeated" if name in names else "is not a valid identifier"
            raise ValueError(
                f"option path={path!r}: parameter {{{name}}} {problem}; "
                "write parameters as {name}, each name once"
            )
        names.add(name)
        regex += re.escape(path[position : found.start()]) + f"(?P<{name}>[^/]+)"
        position = found.end()
    rest = path[position:]
    if any("{" in literal or "}" in literal for literal in _PARAM.split(path)[::2]):
        raise ValueError(
            f"option path={path!r} has an unbalanced brace; write parameters as {{name}}"
        )
    return re.compile(regex + re.escape(rest))


class WebhookOptions(SourceOptions):
    """One HTTP route of the engine's webhook app."""

    path: str = Field(
        description="Route path, starting with /; {name} segments become path_params.",
        examples=["/orders/{order_id}"],
    )
    method: str = Field(
        default="POST",
        description="HTTP method (any case): GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.",
    )
    auth: Literal["bearer", "hmac"] | None = Field(
        default=None,
        description='Request authentication: None, "bearer" (Authorization: Bearer <token>) '
        'or "hmac" (a sha256=<hex> signature of the body).',
    )
    tokens: tuple[str, ...] = Field(
        default=(),
        repr=False,
        description='Accepted bearer tokens (auth="bearer"): a str or a list; default: '
        "TriggerConfig.webhook_tokens (SAGAZ_WEBHOOK_TOKENS).",
    )
    secret: str | bytes | None = Field(
        default=None,
        repr=False,
        description='HMAC secret (auth="hmac"); default: TriggerConfig.webhook_hmac_secret '
        "(SAGAZ_WEBHOOK_HMAC_SECRET).",
    )
    signature_header: str = Field(
        default=DEFAULT_SIGNATURE_HEADER,
        description='Header carrying the sha256=<hex> signature (auth="hmac").',
    )
    max_body_bytes: PositiveInt = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        description="Largest accepted body; a larger one gets 413 and is never read whole.",
    )
    retry_after: int = Field(
        default=1,
        ge=0,
        description="Seconds in the Retry-After header of a 503 (a fraction is rounded up).",
    )
    dead_letter_invalid: bool = Field(
        default=False,
        description="Also store an invalid request (bad JSON, validation error, the trigger "
        "method raised) as a dead letter, within the cap below. By default it is answered 400, "
        "counted and logged, never stored: whoever reaches the port must not grow the store.",
    )
    dead_letter_invalid_limit: PositiveInt = Field(
        default=DEFAULT_DEAD_LETTER_INVALID_LIMIT,
        description="With dead_letter_invalid: at most this many such dead letters per window; "
        "more are counted in sagaz_webhook_invalid_dead_letters_capped_total.",
    )
    dead_letter_invalid_window: float = Field(
        default=DEFAULT_DEAD_LETTER_INVALID_WINDOW,
        gt=0,
        allow_inf_nan=False,
        description="With dead_letter_invalid: the cap's window, in seconds.",
    )

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        compile_path(value)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> str:
        if not isinstance(value, str) or value.upper() not in HTTP_METHODS:
            raise ValueError(
                f"option method={value!r} is not an HTTP method; use one of "
                f"{', '.join(sorted(HTTP_METHODS))}"
            )
        return value.upper()

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, Sequence)
            or not value
            or not all(isinstance(t, str) and t for t in value)
        ):
            raise ValueError("option tokens= must be a non-empty str or a list of them")
        return tuple(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | bytes | None) -> str | bytes | None:
        if value is not None and not value:
            raise ValueError("option secret= must be a non-empty str or bytes")
        return value

    @field_validator("signature_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"option signature_header={value!r} is not a valid header name")
        return value

    @field_validator("retry_after", mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any) -> Any:
        if isinstance(value, float):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"option retry_after={value!r} must be a number of seconds >= 0")
            return math.ceil(value)  # Retry-After is whole seconds
        return value

    @model_validator(mode="after")
    def _cap_needs_opt_in(self) -> WebhookOptions:
        capped = {"dead_letter_invalid_limit", "dead_letter_invalid_window"}
        if not self.dead_letter_invalid and capped & self.model_fields_set:
            raise ValueError(
                "options dead_letter_invalid_limit=/dead_letter_invalid_window= are set but "
                "dead_letter_invalid is not; add dead_letter_invalid=True"
            )
        return self

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> WebhookOptions:
        given = {
            "tokens": bool(self.tokens),
            "secret": self.secret is not None,
            "signature_header": "signature_header" in self.model_fields_set,
        }
        for name, needs in (("tokens", "bearer"), ("secret", "hmac"), ("signature_header", "hmac")):
            if given[name] and self.auth != needs:
                raise ValueError(
                    f"option {name}= is set but auth is not {needs!r}; add auth={needs!r}"
                )
        return self
