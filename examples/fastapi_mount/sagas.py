"""ADR-025's deploy webhook: ``POST /webhooks/deploy/{model_id}`` with a bearer token rolls a
model version out, canary first.

Importing this module registers the trigger; ``app.py`` mounts sagaz's webhook app in the
FastAPI app, so the trigger is served by the app's own server (no port of sagaz's own).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel, Field

from sagaz import Saga, SagaContext, WebhookRequest, action, compensate, trigger

logger = logging.getLogger(__name__)


class DeployRequest(BaseModel):
    """The body of a deploy request."""

    version: str = Field(min_length=1)
    canary_percent: int = Field(default=10, ge=1, le=100)


class ModelDeploymentSaga(Saga):
    saga_name = "model-deployment"

    # Tokens come from SAGAZ_WEBHOOK_TOKENS (a JSON list): 401 without a token, 403 with a
    # wrong one. A body that is not a DeployRequest is answered 400 (nothing stored).
    @trigger(source="webhook", path="/deploy/{model_id}", method="POST", auth="bearer")
    def on_deploy_webhook(self, request: WebhookRequest) -> dict[str, Any]:
        deploy = DeployRequest.model_validate(request.json())
        return {"model_id": request.path_params["model_id"], **deploy.model_dump()}

    @action("deploy_canary")
    async def deploy_canary(self, ctx: SagaContext) -> dict[str, Any]:
        await asyncio.sleep(0.05)  # a call to the serving platform
        logger.info(
            "%s %s: canary at %d%% of traffic",
            ctx["model_id"],
            ctx["version"],
            ctx["canary_percent"],
        )
        return {"canary": f"{ctx['model_id']}-{ctx['version']}-canary"}

    @compensate("deploy_canary")
    async def roll_back_canary(self, ctx: SagaContext) -> None:
        logger.warning("%s %s: canary rolled back", ctx["model_id"], ctx["version"])

    @action("promote")
    async def promote(self, ctx: SagaContext) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        logger.info("%s %s: serving 100%% of traffic", ctx["model_id"], ctx["version"])
        return {"serving": ctx["version"]}
