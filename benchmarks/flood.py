"""Peak RSS under a flood: N events offered far faster than the sagas run, ``drop_oldest``.

Run: ``python benchmarks/flood.py [--events 100000,300000,1000000] [--store retained,memory]``

Each N runs in a fresh Python process (so one run's heap does not hide the next one's): an
engine with ``queue_size=10000``, ``backpressure_strategy="drop_oldest"`` and
``max_concurrent_sagas=100`` gets N events through ``engine.fire()`` as fast as it takes them
(yielding to the loop every 10 events, as a socket-fed source does per read); every saga sleeps 100 ms, so
at most 1,000 sagas/s can complete and the rest are evicted from the full queue. A thread samples
``VmRSS`` every 5 ms; ``VmHWM`` (the kernel's peak) is read at the end.

* **idle**: RSS with the engine started and nothing offered yet.
* **peak**: the highest RSS while the N events are offered and drained (VmHWM).
* **growth**: peak - idle. The target: < 100 MiB and flat in N.

Check: offered = completed + dropped_oldest (+ in flight at the end: 0, the run drains).

Stores: ``memory`` is ``MemorySagaStore`` as shipped: it keeps every completed saga, its steps
and its inbox row until ``purge_expired``, so its rows grow with the completed count (that is
the store, not the pipeline). ``retained`` is the same store with a retention of zero: a saga's
rows are deleted once its inbox row is completed, as a purge job would do later, so what is
left is the pipeline's own memory. The default measures both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from datetime import datetime
from typing import Any

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore

QUEUE_SIZE = 10_000
CONCURRENCY = 100
SAGA_SECONDS = 0.100
MIB = 1024 * 1024


class SlowSaga(Saga):
    saga_name = "bench-flood"

    @trigger(source="memory", channel="flood", idempotency_key=lambda e: e["id"])
    def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"id": event["id"]}

    @action("sleep")
    async def sleep(self, ctx: SagaContext) -> None:
        await asyncio.sleep(SAGA_SECONDS)


class RetainedMemoryStore(MemorySagaStore):
    """``MemorySagaStore`` with a retention of zero: a settled saga's rows go at once.

    It hooks ``_complete_inbox``, which both ``complete_inbox`` and the finishing
    ``save_checkpoint(complete_inbox=...)`` call; should that change, the run's "rows left"
    is no longer 0 and ``main`` says so."""

    def _complete_inbox(self, trigger_id: str, key: str, *, now: datetime) -> None:
        row = self._inbox.get(trigger_id, {}).pop(key, None)
        if row is not None:
            saga_id = row[0]
            self._sagas.pop(saga_id, None)
            self._steps.pop(saga_id, None)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0), so it is this run's peak."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


class Sampler(threading.Thread):
    """The highest ``VmRSS`` seen, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_kib = max(self.peak_kib, status_kib("VmRSS"))
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


async def flood(events: int, store_kind: str, trace: bool = False) -> dict[str, Any]:
    store = RetainedMemoryStore() if store_kind == "retained" else MemorySagaStore()
    config = TriggerConfig(
        queue_size=QUEUE_SIZE,
        backpressure_strategy="drop_oldest",
        max_concurrent_sagas=CONCURRENCY,
    )
    async with TriggerEngine(config, store) as engine:
        await engine.fire("flood", {"id": -1})  # warm the path once before idle is read
        metrics = engine.metrics
        while sum(metrics.completed.values()) < 1:
            await asyncio.sleep(0.001)
        idle_kib = status_kib("VmRSS")
        reset_peak()
        if trace:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
        sampler = Sampler()
        sampler.start()
        start = time.perf_counter()
        for i in range(events):
            await engine.fire("flood", {"id": i})
            if i % 10 == 0:
                await asyncio.sleep(0)
        offered_seconds = time.perf_counter() - start
        if trace:  # the queue is full here: what the flood holds, by allocation site
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            for stat in after.compare_to(before, "lineno")[:12]:
                print(stat, file=sys.stderr)
        assert engine.state is not None
        while metrics.in_flight or len(engine.state.queue):  # drained
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        sampler.stop()
        hwm_kib = status_kib("VmHWM")
        completed = sum(metrics.completed.values()) - 1
        return {
            "events": events,
            "store": store_kind,
            "idle_kib": idle_kib,
            "peak_kib": max(sampler.peak_kib, hwm_kib),
            "end_kib": status_kib("VmRSS"),
            "completed": completed,
            "dropped": metrics.reasons.get("dropped_oldest", 0),
            "reasons": dict(metrics.reasons),
            "in_flight": metrics.in_flight,
            "offered_seconds": offered_seconds,
            "seconds": elapsed,
            "store_sagas": len(store._sagas),
            "store_inbox": sum(len(rows) for rows in store._inbox.values()),
        }


def child(events: int, store_kind: str, trace: bool) -> None:
    print(json.dumps(asyncio.run(flood(events, store_kind, trace))))


def main(args: argparse.Namespace) -> int:
    sizes = [int(n) for n in args.events.split(",") if n]
    kinds = [k for k in args.store.split(",") if k]
    print(
        f"queue_size={QUEUE_SIZE}, drop_oldest, {CONCURRENCY} concurrent sagas of "
        f"{SAGA_SECONDS * 1000:.0f} ms; one fresh process per row"
    )
    header = (
        f"{'store':<9} {'events':>9} {'idle MiB':>9} {'peak MiB':>9} {'growth MiB':>11} "
        f"{'completed':>10} {'dropped':>9} {'sum ok':>7} {'seconds':>8} {'rows left':>10}"
    )
    print(header)
    failed = 0
    for kind in kinds:
        for n in sizes:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--store", kind],
                capture_output=True,
                text=True,
                env=os.environ.copy(),
                check=False,
            )
            if proc.returncode != 0:
                print(f"{kind:<9} {n:>9} failed:\n{proc.stderr[-2000:]}")
                failed += 1
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            growth = (r["peak_kib"] - r["idle_kib"]) / 1024
            ok = r["completed"] + r["dropped"] + r["in_flight"] == n
            print(
                f"{kind:<9} {n:>9,} {r['idle_kib'] / 1024:>9.1f} {r['peak_kib'] / 1024:>9.1f} "
                f"{growth:>11.1f} {r['completed']:>10,} {r['dropped']:>9,} "
                f"{'yes' if ok else 'NO':>7} {r['seconds']:>8.1f} {r['store_sagas']:>10,}"
            )
            if kind == "retained" and r["store_sagas"]:
                print(
                    "          the retained store kept rows: RetainedMemoryStore no longer sees "
                    "the inbox completions (see its docstring); this row is not the pipeline's"
                )
                failed += 1
            other = {k: v for k, v in r["reasons"].items() if k != "dropped_oldest"}
            if other:
                print(f"          other reasons: {other}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="100000,300000,1000000")
    parser.add_argument("--store", default="retained,memory")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="with --child N: print the top allocation growth at the end of the offering",
    )
    arguments = parser.parse_args()
    if arguments.child is not None:
        child(arguments.child, arguments.store, arguments.tracemalloc)
        sys.exit(0)
    sys.exit(main(arguments))
