"""SQS endpoint fixture (moto's server in a subprocess). Owned by the SQS work.

``sqs_endpoint`` is the URL of moto's server, which the session starts on a free port;
``SAGAZ_TEST_SQS_ENDPOINT`` points the suite at an existing SQS-compatible endpoint instead
(ElasticMQ, LocalStack...). Nothing reads AWS credentials from the environment: every client
gets the dummy ones below explicitly (``sqs_client_options()``, ``sqs_source_options()``).

``sqs_client`` (function) is a raw aiobotocore SQS client; ``sqs_queue_url`` creates a uniquely
named queue; ``make_sqs_queue`` creates more (``await make_sqs_queue("dlq")``). Queues made by a
test are deleted after it.

moto runs in its own process rather than in a thread of the test process: it then shares no
GIL and no ``warnings`` filters with the tests, and a crash of the emulator cannot take the
test run with it.

moto 5.2's ``Queue.delete_message`` rebuilds the queue's message list without its lock, so two
``DeleteMessageBatch`` calls served by two server threads at once can resurrect each other's
deleted messages (found by the SQS source tests: acked messages came back after the
visibility timeout). Real SQS has no such race, so the server runs with that method wrapped
in the queue's own lock (``MOTO_SERVER`` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.testing import eventually
from sagaz.testing.tansu import free_port
from tests.services import (
    answers_within,
    require_marker,
    require_service,
    tcp_reachable,
    unique_name,
)

__all__ = [
    "SQS_ACCESS_KEY_ID",
    "SQS_REGION",
    "SQS_SECRET_ACCESS_KEY",
    "MakeQueue",
    "make_sqs_queue",
    "queue_counts",
    "send_messages",
    "sqs_client",
    "sqs_client_options",
    "sqs_endpoint",
    "sqs_queue_url",
    "sqs_source_options",
    "wait_for_counts",
]

SQS_ENDPOINT_ENV = "SAGAZ_TEST_SQS_ENDPOINT"
SQS_REGION = "us-east-1"
SQS_ACCESS_KEY_ID = "testing"
SQS_SECRET_ACCESS_KEY = "testing"  # moto accepts any credentials
STARTUP_DEADLINE_SECONDS = 20.0
START_ATTEMPTS = 3

#: ``python -c MOTO_SERVER HOST PORT``: moto's server with thread-safe message deletes
MOTO_SERVER = """
import sys
from moto.server import main
from moto.sqs.models import Queue

_delete_message = Queue.delete_message


def delete_message(self, receipt_handle):
    with self._messages_lock:
        return _delete_message(self, receipt_handle)


Queue.delete_message = delete_message
main(["-H", sys.argv[1], "-p", sys.argv[2]])
"""

MakeQueue = Callable[..., Awaitable[str]]


def sqs_client_options(endpoint: str) -> dict[str, Any]:
    """Keyword arguments of ``get_session().create_client("sqs", **...)`` for the test endpoint."""
    return {
        "endpoint_url": endpoint,
        "region_name": SQS_REGION,
        "aws_access_key_id": SQS_ACCESS_KEY_ID,
        "aws_secret_access_key": SQS_SECRET_ACCESS_KEY,
    }


def sqs_source_options(endpoint: str) -> dict[str, Any]:
    """The ``SQSOptions`` fields (``@trigger`` options) that point a source at the test endpoint."""
    return {
        "endpoint_url": endpoint,
        "region": SQS_REGION,
        "aws_access_key_id": SQS_ACCESS_KEY_ID,
        "aws_secret_access_key": SQS_SECRET_ACCESS_KEY,
    }


async def send_messages(
    client: Any, queue_url: str, bodies: list[str], **attributes: str
) -> list[str]:
    """``SendMessageBatch`` in batches of 10 (concurrently), each message with the string
    ``attributes``; the MessageIds in body order."""
    message_attributes = {
        name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
    }

    async def batch(start: int) -> list[str]:
        entries = [
            {"Id": str(i), "MessageBody": body, "MessageAttributes": message_attributes}
            for i, body in enumerate(bodies[start : start + 10])
        ]
        response = await client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        assert not response.get("Failed"), response
        ids = {int(entry["Id"]): entry["MessageId"] for entry in response["Successful"]}
        return [ids[i] for i in range(len(entries))]

    chunks = await asyncio.gather(*(batch(start) for start in range(0, len(bodies), 10)))
    return [message_id for chunk in chunks for message_id in chunk]


async def queue_counts(client: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    response = await client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = response["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def wait_for_counts(
    client: Any, queue_url: str, expected: tuple[int, int], within: float = 10.0
) -> None:
    """Wait until the queue holds ``expected`` (visible, in flight) messages."""

    async def reached() -> bool:
        return await queue_counts(client, queue_url) == expected

    await eventually(reached, within=within, what=f"queue counts {expected}")


def _moto_importable() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


def _answers(endpoint: str) -> bool:
    """One HTTP round trip to moto's management API; any HTTP status counts as an answer."""
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2.0):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _running(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is None


def _start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server on a free port; retry a few ports if one is taken meanwhile."""
    failures: list[str] = []
    for _ in range(START_ATTEMPTS):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", MOTO_SERVER, "127.0.0.1", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        answers = functools.partial(_answers, endpoint)
        if answers_within(answers, STARTUP_DEADLINE_SECONDS, _running(process)):
            return process, endpoint
        failures.append(f"port {port}: exit code {process.poll()}")
        _stop(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(
        f"moto's server did not answer within {STARTUP_DEADLINE_SECONDS}s "
        f"({'; '.join(failures)}); log:\n{tail}"
    )


@pytest.fixture
def sqs_endpoint(request: pytest.FixtureRequest) -> str:
    """URL of the session's SQS endpoint (the test must be marked ``sqs``:
    ``tests/services.py``)."""
    require_marker(request)
    endpoint: str = request.getfixturevalue("_sqs_endpoint")
    return endpoint


@pytest.fixture(scope="session")
def _sqs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an SQS endpoint for the whole test session (moto's server by default)."""
    external = os.environ.get(SQS_ENDPOINT_ENV)
    if external:
        require_service(
            "SQS",
            tcp_reachable(external, 443 if external.startswith("https") else 80),
            f"nothing answers at {SQS_ENDPOINT_ENV}={external}",
        )
        yield external.rstrip("/")
        return

    require_service(
        "SQS (moto)",
        _moto_importable(),
        f'install the emulator with `pip install "moto[server]>=5"`, '
        f"or point {SQS_ENDPOINT_ENV} at a running SQS-compatible endpoint",
    )
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    process, endpoint = _start_moto(log_path)
    try:
        yield endpoint
    finally:
        _stop(process)


@pytest.fixture
async def sqs_client(sqs_endpoint: str) -> AsyncIterator[Any]:
    """A raw aiobotocore SQS client on the test endpoint (dummy credentials passed explicitly)."""
    from aiobotocore.session import get_session

    async with get_session().create_client("sqs", **sqs_client_options(sqs_endpoint)) as client:
        yield client


@pytest.fixture
async def make_sqs_queue(sqs_client: Any) -> AsyncIterator[MakeQueue]:
    """Factory: ``await make_sqs_queue(prefix="sagaz-sqs", **attributes)`` → a new queue URL.

    Attribute values are passed as strings (``VisibilityTimeout="2"``). Deleted after the test.
    """
    created: list[str] = []

    async def make(prefix: str = "sagaz-sqs", **attributes: str) -> str:
        name = unique_name(prefix)
        response = await sqs_client.create_queue(QueueName=name, Attributes=attributes)
        url: str = response["QueueUrl"]
        created.append(url)
        return url

    yield make
    for url in created:
        with contextlib.suppress(Exception):
            await sqs_client.delete_queue(QueueUrl=url)


@pytest.fixture
async def sqs_queue_url(make_sqs_queue: MakeQueue) -> str:
    """URL of a new, uniquely named standard queue."""
    return await make_sqs_queue("sagaz-sqs")
