"""The webhook source (starlette + uvicorn): the source, the shared app, server and auth."""

from sagaz.sources.webhook.source import WebhookSource, create, webhook_app, webhook_server

__all__ = ["WebhookSource", "create", "webhook_app", "webhook_server"]
