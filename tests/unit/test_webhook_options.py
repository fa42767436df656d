"""Definition-time checks of webhook options, path templates and the auth schemes."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from sagaz.sources.webhook.auth import BearerAuth, HmacAuth, sign_body
from sagaz.triggers.options import WebhookOptions, parse_trigger_options
from sagaz.triggers.options.webhook import compile_path


def validate(options: dict[str, Any]) -> WebhookOptions:
    """The webhook options of a ``@trigger``, as the registry validates them."""
    _, webhook = parse_trigger_options("webhook", options)
    assert isinstance(webhook, WebhookOptions)
    return webhook


def test_webhook_options_are_normalised() -> None:
    options = validate(
        {"path": "/orders/{order_id}", "method": "put", "retry_after": 2.5, "tokens": "t"}
        | {"auth": "bearer"}
    )
    assert options.method == "PUT"
    assert options.retry_after == 3  # Retry-After is whole seconds, rounded up
    assert options.tokens == ("t",)
    assert options.max_body_bytes == 1024 * 1024
    assert options.signature_header == "X-Hub-Signature-256"
    assert options.dead_letter_invalid is False  # a 400 is answered, not stored


def test_webhook_dead_letter_invalid_cap_options() -> None:
    options = validate(
        {"path": "/x", "dead_letter_invalid": True, "dead_letter_invalid_limit": 5}
        | {"dead_letter_invalid_window": 10}
    )
    assert (options.dead_letter_invalid, options.dead_letter_invalid_limit) == (True, 5)
    assert options.dead_letter_invalid_window == 10.0
    defaults = validate({"path": "/x", "dead_letter_invalid": True})
    assert (defaults.dead_letter_invalid_limit, defaults.dead_letter_invalid_window) == (100, 60)


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({}, "path="),
        ({"path": "orders"}, "path='orders'"),
        ({"path": "/healthz"}, "reserved"),
        ({"path": "/orders?x=1"}, "query"),
        ({"path": "/orders/{order id}"}, "{order id}"),
        ({"path": "/a/{x}/b/{x}"}, "repeated"),
        ({"path": "/orders/{id"}, "unbalanced"),
        ({"path": "/orders/id}"}, "unbalanced"),
        ({"path": "/x", "method": "FETCH"}, "method='FETCH'"),
        ({"path": "/x", "method": 1}, "method=1"),
        ({"path": "/x", "auth": "basic"}, "auth='basic'"),
        ({"path": "/x", "tokens": ["t"]}, "tokens="),
        ({"path": "/x", "auth": "bearer", "tokens": []}, "tokens="),
        ({"path": "/x", "auth": "bearer", "tokens": ["ok", ""]}, "tokens="),
        ({"path": "/x", "secret": "s"}, "secret="),
        ({"path": "/x", "auth": "hmac", "secret": ""}, "secret="),
        ({"path": "/x", "signature_header": "X-Sig"}, "signature_header="),
        ({"path": "/x", "auth": "hmac", "signature_header": "X Sig"}, "signature_header="),
        ({"path": "/x", "max_body_bytes": 0}, "max_body_bytes=0"),
        ({"path": "/x", "max_body_bytes": True}, "max_body_bytes=True"),
        ({"path": "/x", "max_body_bytes": 1.5}, "max_body_bytes=1.5"),
        ({"path": "/x", "retry_after": -1}, "retry_after=-1"),
        ({"path": "/x", "retry_after": float("inf")}, "retry_after=inf"),
        ({"path": "/x", "dead_letter_invalid": "yes"}, "dead_letter_invalid='yes'"),
        ({"path": "/x", "dead_letter_invalid_limit": 5}, "add dead_letter_invalid=True"),
        (
            {"path": "/x", "dead_letter_invalid": True, "dead_letter_invalid_limit": 0},
            "dead_letter_invalid_limit=0",
        ),
        (
            {"path": "/x", "dead_letter_invalid": True, "dead_letter_invalid_window": 0},
            "dead_letter_invalid_window=0",
        ),
    ],
)
def test_webhook_bad_option_is_named_in_the_error(options: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        validate(options)


def test_webhook_hmac_or_bearer_without_credentials_passes_definition_time() -> None:
    # TriggerConfig (SAGAZ_WEBHOOK_TOKENS / SAGAZ_WEBHOOK_HMAC_SECRET) may supply them
    validate({"path": "/x", "auth": "bearer"})
    validate({"path": "/x", "auth": "hmac"})


def test_webhook_path_template_matches_segments_literally() -> None:
    pattern = compile_path("/v1.0/repos/{owner}/{repo}/events")
    found = pattern.fullmatch("/v1.0/repos/acme/sagaz/events")
    assert found is not None
    assert found.groupdict() == {"owner": "acme", "repo": "sagaz"}
    assert pattern.fullmatch("/v1x0/repos/acme/sagaz/events") is None  # "." is literal
    assert pattern.fullmatch("/v1.0/repos/acme/sagaz/x/events") is None  # one segment each
    assert pattern.fullmatch("/v1.0/repos//sagaz/events") is None  # never empty
    assert compile_path("/").fullmatch("/") is not None


def test_webhook_validate_imports_no_web_framework() -> None:
    code = (
        "import sys\n"
        "from sagaz.triggers.options import parse_trigger_options\n"
        "parse_trigger_options('webhook', {'path': '/x', 'auth': 'hmac', 'secret': 's'})\n"
        "assert 'starlette' not in sys.modules, 'starlette imported'\n"
        "assert 'uvicorn' not in sys.modules, 'uvicorn imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_webhook_bearer_auth_compares_every_token() -> None:
    auth = BearerAuth(["alpha", "beta"])
    assert auth.check_headers({"authorization": "Bearer beta"}) is None
    assert auth.check_headers({"authorization": "bearer   alpha "}) is None
    missing = auth.check_headers({})
    assert missing is not None
    assert (missing.status, missing.headers) == (401, {"WWW-Authenticate": "Bearer"})
    empty = auth.check_headers({"authorization": "Bearer "})
    assert empty is not None
    assert empty.status == 401
    for wrong in ("Bearer gamma", "Bearer alph", "Bearer t\u00f6k\u00e9n"):
        failure = auth.check_headers({"authorization": wrong})
        assert failure is not None
        assert failure.status == 403
        assert "gamma" not in failure.error  # never echo what was presented


def test_webhook_hmac_auth_needs_header_then_matching_signature() -> None:
    auth = HmacAuth(b"key", "X-Signature")
    body = b'{"ok": true}'
    signature = sign_body(b"key", body)
    assert signature == sign_body("key", body)
    missing = auth.check_headers({})
    assert missing is not None
    assert missing.status == 401
    headers = {"x-signature": signature}
    assert auth.check_headers(headers) is None
    assert auth.check_body(headers, body) is None
    assert auth.check_body({"x-signature": signature.upper()}, body) is None  # hex case
    for bad in (signature[7:], "sha1=" + signature[7:], sign_body("other", body), "sha256=\u00e9"):
        failure = auth.check_body({"x-signature": bad}, body)
        assert failure is not None
        assert failure.status == 403
    tampered = auth.check_body(headers, body + b"\n")
    assert tampered is not None
    assert tampered.status == 403
