"""Servers of a test's own — PostgreSQL, Redis, RabbitMQ — that it may stop and start again.

The outage tests take a store or a broker away while an app works. They never touch the
machine's shared services (other tests use them meanwhile, and CI must not leave them down):
each starts its own server on a free port, in a temporary directory, from the machine's own
binaries, and the fixtures (``private_postgres``, ``private_redis``, ``private_rabbitmq``)
remove it afterwards.

>>> await server.restart(down_for=2.0)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

from sagaz.testing.tansu import free_port
from tests.services import tcp_reachable

__all__ = [
    "PrivatePostgres",
    "PrivateRabbitMQ",
    "PrivateRedis",
    "PrivateServer",
    "postgres_binaries",
    "rabbitmq_binary",
]

STARTUP_SECONDS = 60.0


class PrivateServer(ABC):
    """One server process of a test's own: ``url``, ``start()``, ``stop()``, ``restart()``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    @abstractmethod
    def url(self) -> str:
        """How clients reach it."""

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    @abstractmethod
    async def _launch(self) -> None:
        """Start the server process (it keeps its data in ``directory``)."""

    @abstractmethod
    async def _halt(self) -> None:
        """Stop the server process and wait until it is gone."""

    async def start(self) -> None:
        """Start it and wait until it accepts connections."""
        await self._launch()
        self.starts += 1
        deadline = time.monotonic() + STARTUP_SECONDS
        while not await self._answers():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{type(self).__name__} did not answer on port {self.port} within "
                    f"{STARTUP_SECONDS}s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)  # between connection probes

    async def _answers(self) -> bool:
        """Whether it serves clients yet (by default: accepts TCP connections)."""
        return await asyncio.to_thread(tcp_reachable, self.url, self.port, 0.5)

    async def stop(self) -> None:
        """Stop it (its data stays); idempotent."""
        await self._halt()

    async def restart(self, *, down_for: float = 1.0) -> None:
        """Stop it, stay down ``down_for`` seconds (the outage), start it again."""
        await self.stop()
        await asyncio.sleep(down_for)  # the outage itself: clients must cope meanwhile
        await self.start()

    async def close(self) -> None:
        """Stop it and remove its directory (fixture teardown)."""
        try:
            await self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _wait_process(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _scratch_directory(prefix: str, owner: str | None = None) -> Path:
    """A new directory under the system's temp dir (not pytest's ``tmp_path``, which another
    user cannot enter), owned by ``owner`` when given."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        user = pwd.getpwnam(owner)
        os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


async def _run(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({process.returncode}):\n{text}")
    return text


# -- PostgreSQL ----------------------------------------------------------------------------


def postgres_binaries() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl`` (``SAGAZ_TEST_PG_BINDIR`` overrides)."""
    explicit = os.environ.get("SAGAZ_TEST_PG_BINDIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


class PrivatePostgres(PrivateServer):
    """A PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl``). PostgreSQL refuses
    to run as root, so under root it runs as the ``postgres`` user (``runuser``)."""

    def __init__(self, binaries: Path) -> None:
        self._as = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        super().__init__(
            _scratch_directory("sagaz-pg-", "postgres" if self._as else None), free_port()
        )
        self.binaries = binaries
        self.data = self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> list[str]:
        return [*self._as, str(self.binaries / "pg_ctl"), "-D", str(self.data), *args]

    async def _launch(self) -> None:
        if not self.data.exists():
            await _run(
                *self._as,
                str(self.binaries / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            )
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        await _run(*self._pg_ctl("-w", "-o", options, "-l", str(self.log_path), "start"))

    async def _halt(self) -> None:
        # "fast": connections are terminated at once, as by a restart of the service
        if (self.data / "postmaster.pid").exists():
            await _run(*self._pg_ctl("-w", "-m", "fast", "stop"))


# -- Redis ---------------------------------------------------------------------------------


class PrivateRedis(PrivateServer):
    """A ``redis-server`` of the test's own, with an append-only file, stopped as the service
    is (SIGTERM, like ``SHUTDOWN``: the file is synced first), so a restart loses nothing a
    client was told is written."""

    def __init__(self) -> None:
        super().__init__(_scratch_directory("sagaz-redis-"), free_port())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _launch(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.directory),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def _answers(self) -> bool:
        """``PING`` answered: listening, and done loading the append-only file."""
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        try:
            async with aioredis.Redis.from_url(self.url, socket_timeout=0.5) as client:
                return bool(await client.ping())
        except (OSError, RedisError):
            return False

    async def _halt(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await self._wait_process()


# -- RabbitMQ ------------------------------------------------------------------------------


def rabbitmq_binary() -> Path | None:
    """The ``rabbitmq-server`` start script (``SAGAZ_TEST_RABBITMQ_SERVER`` overrides)."""
    explicit = os.environ.get("SAGAZ_TEST_RABBITMQ_SERVER")
    for candidate in (explicit, "/usr/lib/rabbitmq/bin/rabbitmq-server"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


class PrivateRabbitMQ(PrivateServer):
    """A RabbitMQ node of the test's own: its own node name, ports, database, cookie and an
    empty plugin list (it starts in a few seconds). Stopped with SIGTERM, as the service is;
    durable queues and persistent messages survive the restart."""

    def __init__(self, script: Path) -> None:
        super().__init__(_scratch_directory("sagaz-rabbitmq-"), free_port())
        self.script = script
        self.node = f"sagaz-{uuid.uuid4().hex[:10]}@localhost"
        self.dist_port = free_port()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def _launch(self) -> None:
        d = self.directory
        (d / "home").mkdir(exist_ok=True)
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        env = {
            **os.environ,
            "HOME": str(d / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        }
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(self.script),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    async def _halt(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
        await self._wait_process()
