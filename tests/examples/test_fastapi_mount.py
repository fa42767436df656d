"""``examples/fastapi_mount``: sagaz's webhook triggers mounted in a FastAPI app, run as its
README says (``uvicorn examples.fastapi_mount.app:app``) and called over HTTP.

FastAPI is a requirement of this example only (``examples/requirements.txt``, which
``.ci/run`` installs): without it the test is skipped, or fails under
``SAGAZ_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest

from sagaz import SagaStatus
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing.tansu import free_port
from tests.services import require_service

from .running import EXAMPLES, running_example

TOKEN = "t0ken-for-the-test"
README = EXAMPLES / "fastapi_mount" / "README.md"
CURL = re.compile(
    r"^curl -X POST localhost:8000(?P<path>/\S+) -H 'authorization: Bearer change-me' "
    r"-H 'content-type: application/json' -d '(?P<body>[^']+)'$",
    re.MULTILINE,
)


@pytest.fixture(autouse=True)
def _fastapi() -> None:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        installed = False
    else:
        installed = True
    require_service(
        "FastAPI",
        installed,
        "the fastapi_mount example needs it: pip install -r examples/requirements.txt",
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_deploy_webhook_served_by_the_fastapi_app_runs_its_saga(tmp_path: Path) -> None:
    port, sagaz_port = free_port(), free_port()
    env = {
        "SAGAZ_WEBHOOK_TOKENS": json.dumps([TOKEN]),
        "SAGAZ_WEBHOOK_PORT": str(sagaz_port),  # not used: the app is mounted
        "SAGAZ_STORE_URL": f"sqlite:///{tmp_path / 'sagaz.db'}",
    }
    command = ["examples.fastapi_mount.app:app", "--host", "127.0.0.1", "--port", str(port)]
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with (
        running_example("uvicorn", env, args=command) as example,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):

        async def ready() -> bool:
            try:
                return (await client.get("/webhooks/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await example.wait_until(ready, "the mounted webhooks to be ready", within=30)
        assert (await client.get("/")).json() == {"service": "ml-platform"}  # the app's own
        # the README's request, with this test's token
        request = CURL.search(README.read_text())
        assert request is not None, f"{README} lost its curl -X POST localhost:8000/... line"
        path, body = request["path"], json.loads(request["body"])
        unauthenticated = await client.post(path, json=body)
        forbidden = await client.post(path, json=body, headers={"authorization": "Bearer nope"})
        invalid = await client.post(path, json={"version": ""}, headers=auth)
        accepted = await client.post(path, json=body, headers=auth)
        assert accepted.status_code == 202, accepted.text
        saga_id = accepted.json()["saga_id"]

        async def deployed() -> dict[str, object] | None:
            answer = await client.get(f"/deployments/{saga_id}")
            return answer.json() if answer.json().get("status") == "completed" else None

        await example.wait_until(deployed, "the deployment to complete")
        deployment = await deployed()
        unknown = await client.get("/deployments/nope")
        assert not listening(sagaz_port)  # sagaz served nothing itself
        # uvicorn shuts the app down (lifespan: sagaz.stop_triggers()), then ends by the
        # signal it caught, as uvicorn >= 0.29 does
        await example.stop(exit_codes=(0, -signal.SIGTERM))
        assert "Application shutdown complete." in example.output()

    assert (unauthenticated.status_code, forbidden.status_code) == (401, 403)
    assert invalid.status_code == 400
    assert unknown.status_code == 404
    assert deployment == {
        "saga_id": saga_id,
        "status": "completed",
        "model_id": "churn",
        "version": "v2",
        "canary_percent": 5,
        "canary": "churn-v2-canary",
        "serving": "v2",
    }
    assert "churn v2: serving 100% of traffic" in example.output()
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        [saga] = await store.list_sagas()
    assert (saga.saga_id, saga.status) == (saga_id, SagaStatus.COMPLETED)
