"""An existing FastAPI app with sagaz's webhook triggers mounted under ``/webhooks``.

Run it from the repository root::

    SAGAZ_WEBHOOK_TOKENS='["change-me"]' uvicorn examples.fastapi_mount.app:app --port 8000

The app's lifespan starts the triggers with the app and stops them with it; requests to
``/webhooks/...`` reach the triggers through the app's own server: sagaz listens on no port of
its own. The app's own routes read the sagas from the same store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from examples.fastapi_mount import sagas  # noqa: F401  (importing the module registers its trigger)
from fastapi import FastAPI, HTTPException

import sagaz
from sagaz.storage import store_from_url

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

store = store_from_url(os.environ.get("SAGAZ_STORE_URL", "sqlite:///sagaz.db"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await sagaz.start_triggers(sagaz.TriggerConfig(), store)  # SAGAZ_WEBHOOK_TOKENS, ...
    try:
        yield
    finally:
        await sagaz.stop_triggers()  # stop intake, finish running sagas, close the store


app = FastAPI(title="ML platform", lifespan=lifespan)
# Before the triggers start: sagaz then serves the webhooks through this app only.
app.mount("/webhooks", sagaz.webhook_app())


@app.get("/")
async def index() -> dict[str, str]:
    return {"service": "ml-platform"}


@app.get("/deployments/{saga_id}")
async def deployment(saga_id: str) -> dict[str, Any]:
    """The deployment a ``POST /webhooks/deploy/...`` answered with ``202 {"saga_id"}``."""
    saga = await store.get_saga(saga_id)
    if saga is None or saga.saga_name != "model-deployment":
        raise HTTPException(404, f"no deployment {saga_id}")
    return {"saga_id": saga_id, "status": saga.status, **saga.context}
