"""``sagaz run MODULE... [--progress]``: run the engine for the triggers the modules register
until SIGINT/SIGTERM, then stop gracefully (finish in-flight sagas, ack, close)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

from sagaz.cli.exits import OK
from sagaz.cli.modules import import_modules
from sagaz.cli.store import opened_store

if TYPE_CHECKING:
    from sagaz.engine.metrics import EngineMetrics

__all__ = ["ProgressLine", "add_commands"]

TTY_EVERY = 0.5
LOG_EVERY = 10.0


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``run``."""
    run = commands.add_parser(
        "run",
        parents=common,
        help="run the engine for the triggers of these modules",
        description="Run the engine for the triggers the modules register, until SIGINT or "
        "SIGTERM; then stop intake, finish in-flight sagas and acknowledge them.",
    )
    run.add_argument("modules", nargs="+", metavar="MODULE", help="e.g. myapp.sagas")
    run.add_argument(
        "--progress",
        action="store_true",
        help="show received / running / completed / dead-lettered: one live line on a "
        "terminal, else a line every --progress-every seconds when it changed",
    )
    run.add_argument(
        "--progress-every",
        type=float,
        metavar="SECONDS",
        help=f"how often the progress line is refreshed ({TTY_EVERY} on a terminal, "
        f"{LOG_EVERY} otherwise)",
    )
    run.set_defaults(handler=run_engine)


class ProgressLine:
    """The engine's counters as one line: rewritten in place (carriage return) on a terminal,
    else printed as a new line whenever it changed (logs, pipes).

    >>> line = ProgressLine(engine.metrics, sys.stdout)  # doctest: +SKIP
    >>> line.show()  # doctest: +SKIP
    received 12  running 3  completed 8  dead-lettered 1
    """

    def __init__(self, metrics: EngineMetrics, out: TextIO, *, every: float | None = None) -> None:
        self.metrics = metrics
        self.out = out
        self.live = out.isatty()
        self.every = every if every is not None else (TTY_EVERY if self.live else LOG_EVERY)
        self._last = ""
        self._open = False  # a live line is on the terminal, not ended yet

    def render(self) -> str:
        """The line as it stands now."""
        m = self.metrics
        return (
            f"received {sum(m.received.values())}  running {m.in_flight}  "
            f"completed {sum(m.completed.values())}  "
            f"dead-lettered {sum(m.dead_lettered.values())}"
        )

    def show(self) -> None:
        """Print the line if it changed since the last time."""
        line = self.render()
        if line == self._last:
            return
        if self.live:  # pad over the end of a longer previous line
            self.out.write("\r" + line.ljust(len(self._last) if self._open else 0))
            self._open = True
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self._last = line

    async def run(self) -> None:
        """Refresh the line every :attr:`every` seconds until cancelled."""
        while True:
            self.show()
            await asyncio.sleep(self.every)

    def finish(self) -> None:
        """The final counts; on a terminal, end the live line (the next output starts on a
        line of its own)."""
        self.show()
        if self._open:
            self.out.write("\n")
            self.out.flush()
            self._open = False


async def run_engine(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; exit status 0 after a graceful stop."""
    from sagaz.config import TriggerConfig
    from sagaz.engine.engine import TriggerEngine

    import_modules(args.modules)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    progress: ProgressLine | None = None
    refresh: asyncio.Task[None] | None = None
    async with (
        opened_store(args, create=True) as store,
        TriggerEngine(TriggerConfig(), store) as engine,
    ):
        print(f"sagaz: running {len(engine.triggers)} trigger(s); Ctrl-C to stop", flush=True)
        if args.progress:
            progress = ProgressLine(engine.metrics, sys.stdout, every=args.progress_every)
            refresh = asyncio.create_task(progress.run(), name="sagaz-progress")
        try:
            await stop.wait()
        finally:
            if refresh is not None:
                refresh.cancel()
                await asyncio.wait({refresh})
        if progress is not None:
            progress.finish()  # ends the live line before the next message
        print("sagaz: stopping (finishing in-flight sagas)...", flush=True)
    if progress is not None:
        progress.finish()  # the counts once in-flight sagas finished
    return OK
