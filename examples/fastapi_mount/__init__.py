"""Webhook triggers mounted in an existing FastAPI app (see README.md; run
``uvicorn examples.fastapi_mount.app:app``)."""
