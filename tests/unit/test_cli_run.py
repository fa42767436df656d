"""``sagaz run --progress``: the live line of received / running / completed / dead-lettered
(a whole ``sagaz run --progress``: ``tests/integration/test_cli_end_to_end.py``)."""

from __future__ import annotations

import asyncio
import io

from sagaz.cli.run import ProgressLine
from sagaz.engine.metrics import EngineMetrics


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_line_rewritten_in_place() -> None:
    metrics, out = EngineMetrics(), Terminal()
    line = ProgressLine(metrics, out)
    assert line.every == 0.5
    line.show()
    metrics.received["t.a"] += 12
    for _ in range(10):
        metrics.started(0.0)
    line.show()
    line.show()  # unchanged: nothing written
    for _ in range(10):
        metrics.finished()
    metrics.completed["t.a"] += 1
    metrics.dead_lettered["t.a"] += 1
    line.finish()
    assert out.getvalue() == (
        "\rreceived 0  running 0  completed 0  dead-lettered 0"
        "\rreceived 12  running 10  completed 0  dead-lettered 0"
        "\rreceived 12  running 0  completed 1  dead-lettered 1 "  # padded over the longer one
        "\n"
    )
    line.finish()  # the line was ended already: nothing more
    assert out.getvalue().endswith("dead-lettered 1 \n")


def test_progress_elsewhere_is_a_new_line_whenever_it_changed() -> None:
    metrics, out = EngineMetrics(), io.StringIO()
    line = ProgressLine(metrics, out)
    assert line.every == 10.0
    line.show()
    line.show()
    metrics.received["t.a"] += 1
    line.finish()
    assert out.getvalue() == (
        "received 0  running 0  completed 0  dead-lettered 0\n"
        "received 1  running 0  completed 0  dead-lettered 0\n"
    )


async def test_progress_refreshes_every_interval_until_cancelled() -> None:
    from sagaz.testing import eventually

    metrics, out = EngineMetrics(), io.StringIO()
    task = asyncio.create_task(ProgressLine(metrics, out, every=0.01).run())
    try:
        await eventually(lambda: "received 0" in out.getvalue(), within=5)
        metrics.received["t.a"] += 3
        await eventually(lambda: "received 3" in out.getvalue(), within=5)
    finally:
        task.cancel()
        await asyncio.wait({task})
    assert task.cancelled()
