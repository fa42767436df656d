"""Who may see the dashboard: bearer tokens (header or login cookie) and CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sagaz.exceptions import ConfigurationError

__all__ = ["COOKIE", "Access", "Tokens"]

#: the cookie a browser gets from the login form (holds the token's digest, not the token)
COOKIE = "sagaz_dashboard"


@dataclass(frozen=True, slots=True)
class Access:
    """One authenticated request: whether it may act, and the CSRF token of its forms."""

    can_act: bool
    csrf: str


class Tokens:
    """The dashboard's tokens: full ones act, read-only ones only read."""

    def __init__(self, tokens: list[str], read_only_tokens: list[str]) -> None:
        if not tokens and not read_only_tokens:
            raise ConfigurationError(
                "the dashboard needs a token: set TriggerConfig.dashboard_tokens "
                "(SAGAZ_DASHBOARD_TOKENS) or webhook_tokens, or pass tokens="
            )
        self._secret = secrets.token_bytes(32)
        self._full = {self._digest(t) for t in tokens}
        self._read_only = {self._digest(t) for t in read_only_tokens} - self._full

    def _digest(self, token: str) -> str:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()

    def cookie_for(self, token: str) -> str | None:
        """The login cookie's value for ``token``, or ``None`` when it is no token of ours."""
        digest = self._digest(token)
        return digest if digest in self._full or digest in self._read_only else None

    def check(self, authorization: str | None, cookie: str | None) -> Access | None:
        """The request's access from its ``Authorization: Bearer`` header or login cookie."""
        digest: str | None = None
        if authorization and authorization.lower().startswith("bearer "):
            digest = self._digest(authorization[7:].strip())
        elif cookie:
            digest = cookie
        if digest is None:
            return None
        for known in (*self._full, *self._read_only):
            if hmac.compare_digest(digest, known):
                csrf = hmac.new(self._secret, b"csrf:" + known.encode(), "sha256").hexdigest()
                return Access(can_act=known in self._full, csrf=csrf)
        return None
