"""Run an example as its README says: ``python -m examples.<name>.main`` from the repository
root, as a subprocess with its settings in the environment; read what it logs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sagaz.testing import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: sagaz's variables of the test process must not leak into an example (only those given)
_OWN_PREFIXES = ("SAGAZ_",)
_KEEP = ("SAGAZ_REQUIRE_SERVICES",)


@dataclass
class RunningExample:
    """An example's process and the lines it wrote (stdout and stderr, in one list)."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_until(
        self, condition: Callable[[], object], what: str, *, within: float = 20.0
    ) -> None:
        """Poll ``condition`` (plain or async) until it holds; fail with the example's output
        if the example exits or ``within`` seconds pass first."""

        async def reached() -> object:
            if self.process.returncode is not None:
                pytest.fail(f"the example exited ({self.process.returncode}):\n{self.output()}")
            result = condition()
            return await result if inspect.isawaitable(result) else result

        try:
            await eventually(reached, within=within, interval=0.05, what=what)
        except AssertionError as timeout:
            pytest.fail(f"{timeout}; the example's output:\n{self.output()}")

    async def wait_for_line(self, text: str, *, within: float = 20.0) -> None:
        """Wait for a line containing ``text``."""
        await self.wait_until(
            lambda: any(text in line for line in self.lines), f"a line with {text!r}", within=within
        )

    async def stop(self, *, exit_codes: Sequence[int] = (0,)) -> None:
        """SIGTERM, as Ctrl-C or a process manager would; it must exit with one of
        ``exit_codes``, without a traceback."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await self.process.wait()
        assert code in exit_codes, f"exit code {code}:\n{self.output()}"
        assert not [line for line in self.lines if "Traceback" in line], self.output()


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for raw in stream:
        into.append(raw.decode(errors="replace").rstrip("\n"))


@contextlib.asynccontextmanager
async def running_example(
    module: str, env: Mapping[str, str], *, args: Sequence[str] = ()
) -> AsyncIterator[RunningExample]:
    """``python -m <module>`` in the repository root with ``env`` added to a clean environment
    (no ``SAGAZ_*`` of the test process); killed if the test did not stop it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES) or k in _KEEP}
    environ.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    example = RunningExample(process)
    assert process.stdout is not None and process.stderr is not None
    readers = [
        asyncio.create_task(_collect(process.stdout, example.lines)),
        asyncio.create_task(_collect(process.stderr, example.lines)),
    ]
    try:
        yield example
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await asyncio.gather(*readers)


async def run_command(
    module: str, env: Mapping[str, str], args: Sequence[str], *, within: float = 30.0
) -> str:
    """``python -m <module> <args>`` like :func:`running_example`, to its end; it must exit 0.
    Its output."""
    async with running_example(module, env, args=args) as command:
        async with asyncio.timeout(within):
            code = await command.process.wait()
    assert code == 0, f"exit code {code}:\n{command.output()}"
    return command.output()
