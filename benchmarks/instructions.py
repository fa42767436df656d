"""Instructions per event of the in-memory pipeline and of the saga loop, counted by valgrind.

Run: ``python benchmarks/instructions.py [--events 2000] [--no-gc]`` (needs ``valgrind`` on
the PATH; takes about a minute).

On a shared machine the CPU time per event of one and the same code moves by ±10% from run
to run, more than most single changes to the engine. The instructions a process executes
do not depend on the other jobs: this script runs ``pipeline.py``'s ``sagaz_throughput`` and
``raw_throughput(run_saga=True)`` (the saga loop) under ``valgrind --tool=cachegrind
--cache-sim=no`` with ``PYTHONHASHSEED=0``, each in its own process after a warm-up of 300
events of both, subtracts a process that only warms up, and divides by ``--events``. Runs of
the same code agree within about 1,000 instructions per event. Instructions are not time,
but on this interpreter-bound path they follow it (300,000 ≈ 130 µs on the 2-core machine of
``README.md``). ``--no-gc``: with the garbage collector off, to see its share.
``--batch N`` also counts sagaz admitting the same events in batches of ``N`` through
``admit_many`` (what a Kafka partition's poll hands to the engine), without ``fire()``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
from pathlib import Path

from _cachegrind import instructions, require_valgrind, start

WARM_UP = 300


async def _batches(events: int, size: int) -> None:
    """``pipeline.py``'s sagaz run, its events admitted ``size`` at a time (``admit_many``)."""
    import pipeline

    from sagaz import TriggerConfig
    from sagaz.engine.engine import TriggerEngine
    from sagaz.events import Delivery, EventMeta
    from sagaz.storage.memory import MemorySagaStore

    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=pipeline.WORKERS)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        assert engine.admission is not None
        [active] = engine.triggers.values()
        tid = active.trigger_id
        for start in range(0, events, size):
            batch = [
                Delivery({"id": i}, EventMeta("memory", tid, None, "bench"), "", decoded=True)
                for i in range(start, min(events, start + size))
            ]
            await engine.admission.admit_many(active, batch)
        await pipeline._wait_completed(engine, events)


async def _child(events: int, which: str, batch: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import pipeline

    await pipeline.sagaz_throughput(WARM_UP)
    await pipeline.raw_throughput(WARM_UP, run_saga=True)
    if which == "sagaz":
        await pipeline.sagaz_throughput(events)
    elif which == "loop":
        await pipeline.raw_throughput(events, run_saga=True)
    elif which == "batch":
        await _batches(events, batch)


def _start(events: int, which: str, collector: bool, batch: int) -> subprocess.Popen[str]:
    args = ["--child", which, "--events", str(events), "--batch", str(batch)]
    return start(__file__, *args, *([] if collector else ["--no-gc"]))


def main(events: int, collector: bool, batch: int) -> None:
    require_valgrind()
    names = ("base", "sagaz", "loop", "batch") if batch else ("base", "sagaz", "loop")
    runs = {name: _start(events if name != "base" else 0, name, collector, batch) for name in names}
    counts = {name: instructions(process) for name, process in runs.items()}
    per = {name: (counts[name] - counts["base"]) / events for name in names[1:]}
    print(f"events: {events}, collector {'on' if collector else 'off'}")
    print(f"instructions per event: saga loop {per['loop']:,.0f}, sagaz {per['sagaz']:,.0f}")
    print(f"saga loop / sagaz: {per['loop'] / per['sagaz']:.1%}")
    if batch:
        print(f"sagaz in batches of {batch} (admit_many): {per['batch']:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--no-gc", action="store_true", help="the garbage collector off")
    parser.add_argument("--batch", type=int, default=0, help="also admit_many in batches of N")
    parser.add_argument(
        "--child", choices=("base", "sagaz", "loop", "batch"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        if args.no_gc:
            gc.disable()
        asyncio.run(_child(args.events, args.child, args.batch))
    else:
        main(args.events, not args.no_gc, args.batch)
