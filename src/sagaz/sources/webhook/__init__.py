"""The webhook source (starlette + uvicorn): the source, the shared app, server and auth."""

from sagaz.sources.webhook.source import (
    OPTIONS,
    REQUIRED,
    WebhookSource,
    create,
    validate,
    webhook_app,
)

__all__ = ["OPTIONS", "REQUIRED", "WebhookSource", "create", "validate", "webhook_app"]
