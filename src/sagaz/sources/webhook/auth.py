"""Authentication of webhook requests: bearer tokens and GitHub-style HMAC signatures.

Both checks run in two phases so that a request without credentials is refused before its
body is read:

* :meth:`WebhookAuth.check_headers` runs first, on the headers alone;
* :meth:`WebhookAuth.check_body` runs once the (size-limited) body has been read.

Status codes: **401** when the request carries no usable credentials (no ``Authorization:
Bearer`` header, no signature header), **403** when it carries credentials that are wrong.
Secrets are compared in constant time (:func:`hmac.compare_digest`) and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sagaz.triggers.options.webhook import DEFAULT_SIGNATURE_HEADER

__all__ = [
    "DEFAULT_SIGNATURE_HEADER",
    "AuthFailure",
    "BearerAuth",
    "HmacAuth",
    "WebhookAuth",
    "sign_body",
]

_SIGNATURE_PREFIX = "sha256="


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was refused: the status code, a client-safe message and extra headers."""

    status: int
    error: str
    headers: Mapping[str, str] = field(default_factory=dict)


class WebhookAuth(Protocol):
    """What the webhook app asks of an authentication scheme."""

    #: ``"bearer"`` or ``"hmac"``
    scheme: str

    def check_headers(self, headers: Mapping[str, str]) -> AuthFailure | None:
        """Refuse a request from its headers alone (before the body is read), or ``None``."""
        ...

    def check_body(self, headers: Mapping[str, str], body: bytes) -> AuthFailure | None:
        """Refuse a request once its body is read, or ``None``."""
        ...


class BearerAuth:
    """``Authorization: Bearer <token>`` against a fixed set of tokens.

    >>> auth = BearerAuth(["s3cret"])
    >>> auth.check_headers({"authorization": "Bearer s3cret"}) is None
    True
    >>> auth.check_headers({}).status
    401
    """

    scheme = "bearer"

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens or any(not token for token in tokens):
            raise ValueError("BearerAuth needs at least one non-empty token")
        self._tokens = tuple(token.encode() for token in tokens)

    def check_headers(self, headers: Mapping[str, str]) -> AuthFailure | None:
        """401 without a bearer credential, 403 for a token that is not configured."""
        scheme, _, credential = headers.get("authorization", "").strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return AuthFailure(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        # latin-1 is how ASGI servers decode header bytes, so this never fails
        presented = credential.encode("latin-1")
        matched = False
        for token in self._tokens:  # no early exit: the time taken does not reveal which matched
            matched |= hmac.compare_digest(presented, token)
        if not matched:
            return AuthFailure(403, "invalid bearer token")
        return None

    def check_body(self, headers: Mapping[str, str], body: bytes) -> AuthFailure | None:
        """Nothing to check: a bearer token does not cover the body."""
        return None


def sign_body(secret: str | bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex of HMAC-SHA256>`` (GitHub style).

    >>> sign_body("k", b"{}")[:7]
    'sha256='
    """
    key = secret.encode() if isinstance(secret, str) else secret
    return _SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


class HmacAuth:
    """An HMAC-SHA256 signature of the raw body in ``signature_header`` (``sha256=<hex>``).

    >>> auth = HmacAuth("k")
    >>> auth.check_body({"x-hub-signature-256": sign_body("k", b"{}")}, b"{}") is None
    True
    """

    scheme = "hmac"

    def __init__(
        self, secret: str | bytes, signature_header: str = DEFAULT_SIGNATURE_HEADER
    ) -> None:
        if not secret:
            raise ValueError("HmacAuth needs a non-empty secret")
        self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self.signature_header = signature_header
        self._header_key = signature_header.lower()

    def check_headers(self, headers: Mapping[str, str]) -> AuthFailure | None:
        """401 when the signature header is absent (the body is then never read)."""
        if not headers.get(self._header_key, "").strip():
            return AuthFailure(
                401, f"missing signature: send '{self.signature_header}: sha256=<hex>'"
            )
        return None

    def check_body(self, headers: Mapping[str, str], body: bytes) -> AuthFailure | None:
        """403 when the signature is malformed or does not match the body."""
        presented = headers.get(self._header_key, "").strip()
        expected = sign_body(self._secret, body)
        if not hmac.compare_digest(presented.lower().encode("latin-1"), expected.encode()):
            return AuthFailure(403, "invalid signature")
        return None
