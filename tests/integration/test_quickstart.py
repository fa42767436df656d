"""The README's main example, run as a user runs it: ``python examples/quickstart.py``.

The test sends the ``curl`` requests of ``README.md`` and ``examples/README.md`` (parsed from
them, so they cannot drift apart from the example) through httpx, waits for each saga's
completion on the example's stdout, drops an order file into its inbox, and stops the example
with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sagaz import SagaStatus
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from sagaz.testing.tansu import free_port

pytest.importorskip("uvicorn")
pytest.importorskip("watchfiles")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
QUICKSTART = EXAMPLES / "quickstart.py"
CURL = re.compile(
    r"curl -X POST localhost:8000(?P<path>/\S+) -H 'content-type: application/json' "
    r"-d '(?P<body>[^']+)'"
)


def readme_requests() -> list[tuple[str, bytes]]:
    """The path and body of the ``curl`` line of README.md and of examples/README.md."""
    requests = []
    for readme in (ROOT / "README.md", EXAMPLES / "README.md"):
        found = CURL.search(readme.read_text())
        assert found is not None, f"{readme} lost its curl -X POST localhost:8000/... line"
        requests.append((found["path"], found["body"].encode()))
    return requests


@dataclass
class Example:
    process: asyncio.subprocess.Process
    url: str
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(["-- stdout --", *self.lines, "-- stderr --", *self.errors])

    async def wait_until(
        self, condition: Callable[[], object], what: str, *, within: float = 15.0
    ) -> None:
        """Poll ``condition`` (plain or async) until it holds; fail with the example's output
        if it exits or ``within`` seconds pass first."""

        async def reached() -> object:
            if self.process.returncode is not None:
                pytest.fail(f"the example exited ({self.process.returncode}):\n{self.output()}")
            result = condition()
            return await result if inspect.isawaitable(result) else result

        try:
            await eventually(reached, within=within, interval=0.02, what=what)
        except AssertionError as timeout:
            pytest.fail(f"{timeout}:\n{self.output()}")

    async def wait_for_line(self, line: str) -> None:
        await self.wait_until(lambda: line in self.lines, f"line {line!r}")


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for raw in stream:
        into.append(raw.decode(errors="replace").rstrip("\n"))


@contextlib.asynccontextmanager
async def running_example(workdir: Path) -> AsyncIterator[Example]:
    """Start the example in ``workdir`` on a free port; kill it if the test did not stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SAGAZ_STORE_URL", "QUICKSTART_INBOX")}
    env["SAGAZ_WEBHOOK_PORT"] = str(port)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(QUICKSTART),
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    example = Example(process, f"http://127.0.0.1:{port}")
    assert process.stdout is not None and process.stderr is not None
    readers = [
        asyncio.create_task(_collect(process.stdout, example.lines)),
        asyncio.create_task(_collect(process.stderr, example.errors)),
    ]
    try:
        yield example
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await asyncio.gather(*readers)


async def wait_healthy(example: Example, client: httpx.AsyncClient, within: float = 30.0) -> None:
    """Poll ``/healthz`` until it answers 200 (the example is importing and starting)."""

    async def healthy() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return (await client.get("/healthz")).status_code == 200
        return False

    await example.wait_until(healthy, "/healthz to answer 200", within=within)


def write(path: Path, text: str) -> None:
    path.write_text(text)


def started_from_file(example: Example, name: str) -> str | None:
    """The id of the saga the example says it started from the inbox file ``name``."""
    for line in example.lines:
        found = re.fullmatch(rf"saga (\S+) started \(order, from file {re.escape(name)}\)", line)
        if found:
            return found[1]
    return None


async def test_quickstart_runs_the_readme_request_to_completion_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    requests = readme_requests()
    saga_ids: list[str] = []
    async with running_example(tmp_path) as example:
        async with httpx.AsyncClient(base_url=example.url, timeout=10) as client:
            await wait_healthy(example, client)
            for path, body in requests:
                response = await client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
                # 200 "duplicate" if both READMEs ever send the very same body
                assert response.status_code in (200, 202), response.text
                saga_ids.append(response.json()["saga_id"])
            assert response.status_code == 202 or saga_ids[0] == saga_ids[1]
            for saga_id in saga_ids:
                await example.wait_for_line(f"saga {saga_id} completed")

            # an order file dropped into the inbox the example created
            write(tmp_path / "inbox" / "f-1.json", '{"order_id": "F-1", "amount": 3}')
            await example.wait_until(
                lambda: started_from_file(example, "f-1.json") is not None,
                "saga started from f-1.json",
            )
            file_saga_id = started_from_file(example, "f-1.json")
            assert file_saga_id is not None
            await example.wait_for_line(f"saga {file_saga_id} completed")

        example.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            returncode = await example.process.wait()

    assert returncode == 0, example.output()
    assert example.lines[-1] == "stopped", example.output()
    for saga_id in saga_ids:
        assert [line for line in example.lines if line.startswith(f"saga {saga_id} ")] == [
            f"saga {saga_id} started (order, from webhook)",
            f"saga {saga_id} step reserve_stock done",
            f"saga {saga_id} step charge_payment done",
            f"saga {saga_id} step ship done",
            f"saga {saga_id} completed",
        ]
    assert not [line for line in example.errors if "Traceback" in line], example.output()

    # the sagas are in the SQLite file of the working directory
    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    async with store:
        records = [await store.get_saga(saga_id) for saga_id in saga_ids]
        from_file = await store.get_saga(file_saga_id)
    for record, (_, body) in zip(records, requests, strict=True):
        assert record is not None and record.status is SagaStatus.COMPLETED
        assert {k: record.context[k] for k in ("order_id", "amount")} == json.loads(body)
    assert from_file is not None and from_file.status is SagaStatus.COMPLETED
    assert from_file.context["order_id"] == "F-1"
