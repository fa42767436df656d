"""Throughput and start latency of the in-memory trigger pipeline, against a raw baseline.

Run: ``python benchmarks/pipeline.py [--events 20000]``

* **sagaz**: ``engine.fire()`` → admission (decode, inbox claim, transform, pending row) →
  BackpressureQueue → dispatcher → a no-op one-step saga (checkpointed) → settlement, on a
  ``MemorySagaStore``.
* **saga loop** (the baseline of the ratio): a raw ``asyncio.Queue`` feeding a pool of the same
  number of workers, each running the same saga with ``await saga.run(ctx, store=store)`` on a
  ``MemorySagaStore`` — the home-made consumer loop sagaz replaces, with none of its
  guarantees (no inbox, no backpressure strategy, no retries or dead letters, no ack after
  the terminal state).
* **saga loop + inbox**: the saga loop whose workers also keep sagaz's one guarantee against
  running an event twice by hand, with the same store's API: ``claim_inbox`` of the event's
  key, ``saga.run`` under a saga id made from it, ``complete_inbox``. Its rate over the saga
  loop's is the ceiling of any engine that keeps an inbox (the contract's dedup), before
  backpressure, leases, a pending row or the ack after the terminal state.
* **bare floor**: the same queue and workers awaiting a no-op coroutine — what any asyncio
  pipeline pays before it does any work (printed for scale: a checkpointed saga makes seven
  store calls, the floor none).

All run in this process, one after the other, and the ratios are printed. Start latency is
measured at half of sagaz's measured throughput (paced producer): accepted → saga started.
The process CPU time per event (``time.process_time``) of the saga loop and of sagaz is
printed too: on a shared machine it moves much less than the rates; and the garbage
collections over the same windows (``gc.callbacks``; the collector's settings untouched).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta
from typing import Any

from _gc_watch import GcWatch

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.records import ClaimOutcome
from sagaz.storage.memory import MemorySagaStore

WORKERS = 100


class NoopSaga(Saga):
    saga_name = "bench-noop"

    @trigger(source="memory", channel="bench", idempotency_key=lambda e: e["id"])
    def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"id": event["id"]}

    @action("noop")
    async def noop(self, ctx: SagaContext) -> None:
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_completed(engine: TriggerEngine, total: int) -> None:
    while sum(engine.metrics.completed.values()) < total:
        await asyncio.sleep(0.001)


async def sagaz_throughput(events: int) -> float:
    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=WORKERS)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        start = time.perf_counter()
        for i in range(events):
            await engine.fire("bench", {"id": i})
        await _wait_completed(engine, events)
        elapsed = time.perf_counter() - start
    return events / elapsed


async def sagaz_latency(rate: float, seconds: float) -> list[float]:
    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=WORKERS)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            # a real source yields to the loop between messages (socket reads): so does this
            await asyncio.sleep(max(0.0, delay))
            await engine.fire("bench", {"id": i})
        await _wait_completed(engine, total)
        return list(engine.metrics.start_latencies)


async def raw_throughput(events: int, *, run_saga: bool, inbox: bool = False) -> float:
    """The raw queue + worker pool; ``run_saga``: each event runs :class:`NoopSaga`;
    ``inbox``: within a claim of its key in the store's inbox, completed after the run."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1000)
    done = 0
    finished = asyncio.Event()
    store = MemorySagaStore()
    saga = NoopSaga()

    async def noop(_: int) -> None:
        return None

    async def handle(event: int) -> None:
        await saga.run({"id": event}, store=store)

    lease = utcnow() + timedelta(minutes=5)

    async def handle_once(event: int) -> None:
        key = str(event)
        saga_id = "loop-" + key
        claim = await store.claim_inbox("loop", key, saga_id, "worker", lease)
        if claim.outcome is ClaimOutcome.CLAIMED:
            await saga.run({"id": event}, saga_id=saga_id, store=store)
            await store.complete_inbox("loop", key)

    work = (handle_once if inbox else handle) if run_saga else noop

    async def worker() -> None:
        nonlocal done
        while True:
            item = await queue.get()
            await work(item)
            done += 1
            if done == events:
                finished.set()

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    start = time.perf_counter()
    for i in range(events):
        await queue.put(i)
    await finished.wait()
    elapsed = time.perf_counter() - start
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return events / elapsed


async def raw_latency(rate: float, seconds: float) -> list[float]:
    queue: asyncio.Queue[float] = asyncio.Queue(maxsize=1000)
    latencies: list[float] = []

    async def worker() -> None:
        while True:
            put_at = await queue.get()
            latencies.append(time.perf_counter() - put_at)

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
        await queue.put(time.perf_counter())
    while len(latencies) < total:
        await asyncio.sleep(0.001)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return latencies


async def main(events: int, seconds: float) -> None:
    await sagaz_throughput(min(events, 2000))  # warm-up
    await raw_throughput(min(events, 2000), run_saga=True)
    await raw_throughput(min(events, 2000), run_saga=True, inbox=True)
    bare = await raw_throughput(events, run_saga=False)
    loop_gc, ours_gc = GcWatch(), GcWatch()
    loop_gc.start()
    cpu = time.process_time()
    loop = await raw_throughput(events, run_saga=True)
    loop_cpu = (time.process_time() - cpu) / events * 1e6
    loop_gc.stop()
    cpu = time.process_time()
    inbox = await raw_throughput(events, run_saga=True, inbox=True)
    inbox_cpu = (time.process_time() - cpu) / events * 1e6
    ours_gc.start()
    cpu = time.process_time()
    ours = await sagaz_throughput(events)
    ours_cpu = (time.process_time() - cpu) / events * 1e6
    ours_gc.stop()
    rate = ours / 2
    ours_lat = await sagaz_latency(rate, seconds)
    raw_lat = await raw_latency(rate, seconds)
    ms = 1000.0
    print(
        f"events: {events}, workers: {WORKERS}, latency load: {rate:,.0f} events/s for {seconds}s"
    )
    print(f"{'pipeline':<11} {'events/s':>12} {'p50 ms':>9} {'p99 ms':>9}")
    print(
        f"{'bare floor':<11} {bare:>12,.0f} "
        f"{statistics.median(raw_lat) * ms:>9.3f} {percentile(raw_lat, 0.99) * ms:>9.3f}"
    )
    print(f"{'saga loop':<11} {loop:>12,.0f} {'':>9} {'':>9}")
    print(f"{'  + inbox':<11} {inbox:>12,.0f} {'':>9} {'':>9}")
    print(
        f"{'sagaz':<11} {ours:>12,.0f} "
        f"{statistics.median(ours_lat) * ms:>9.3f} {percentile(ours_lat, 0.99) * ms:>9.3f}"
    )
    print(f"ratio sagaz/saga loop: {ours / loop:.1%}   (sagaz/bare floor: {ours / bare:.1%})")
    print(
        f"CPU µs/event: saga loop {loop_cpu:.1f}, sagaz {ours_cpu:.1f} "
        f"(saga loop/sagaz: {loop_cpu / ours_cpu:.1%})"
    )
    print(
        f"ceiling of an engine with an inbox: saga loop + inbox / saga loop {inbox / loop:.1%}; "
        f"CPU µs/event {inbox_cpu:.1f} (saga loop/+ inbox: {loop_cpu / inbox_cpu:.1%}); "
        f"sagaz / saga loop + inbox {ours / inbox:.1%}"
    )
    print("GC collections young/middle/full; GC µs/event (young/middle/full); tracked objects:")
    print(f"  saga loop {loop_gc.per(events)}")
    print(f"  sagaz     {ours_gc.per(events)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.seconds))
