"""Instructions per message of the Kafka source's own path, counted by valgrind, no broker.

Run: ``python benchmarks/kafka_instructions.py [--events 6000] [--callgrind DIR]`` (needs
``valgrind``; about a minute).

``kafka.py`` times sagaz against a raw aiokafka loop on a Tansu broker: its rates and CPU µs
move by ±10% or more from run to run on a shared machine, and half of what it measures is the
broker and aiokafka's fetches. This script counts, with ``valgrind --tool=cachegrind``
(``PYTHONHASHSEED=0``), what sagaz's Kafka path adds to the shared pipeline, each variant in
its own process after a warm-up of 1,500 messages, per message:

* ``kafka``: ``kafka.py``'s saga (a ``dict[str, Any]`` trigger method, one no-op step) on a
  ``MemorySagaStore``, run by ``TriggerEngine`` with its real ``KafkaSource``, whose consumer
  is a stand-in (:class:`FeedConsumer`): ``getmany`` makes and hands out aiokafka
  ``ConsumerRecord`` batches of ``kafka.py``'s 100-byte JSON values (up to 500 records of one
  partition per poll, 3 partitions, in turn), ``commit`` records the offsets. So it holds the
  source's poll loop and buffering, records → deliveries, the batch handover, the decoding of
  the value, the acks and the offset commits; not aiokafka's fetching and parsing (the raw
  loop pays that too).
* ``admit``: the same trigger and records, made into deliveries by hand as the source makes
  them (bytes payload, same ids) and admitted 500 at a time with ``admit_many`` (what
  ``instructions.py --batch 500`` does): the shared pipeline with the same decoding.

Each is counted less a process of the same warm-up that then only makes the same records
and drops them (their making is in both counts, so it cancels out).

``kafka`` less ``admit`` is the source's own share. ``--callgrind DIR`` writes callgrind
profiles of a ``kafka`` child and of its base into ``DIR`` instead (C functions only: the
interpreter's, pydantic's, the collector's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from _cachegrind import instructions, require_valgrind, start

WARM_UP = 1500
PARTITIONS = 3
BATCH = 500
TOPIC = "bench"


def _per_partition(events: int) -> list[int]:
    """How many of ``events`` messages each partition gets (round-robin, as ``kafka.py``)."""
    return [len(range(p, events, PARTITIONS)) for p in range(PARTITIONS)]


def _records(partition: int, first: int, count: int) -> list[Any]:
    """``count`` ConsumerRecords of ``partition`` from offset ``first``, with the JSON bodies
    ``kafka.py`` produces: made when polled, so that no more are alive than a run holds."""
    from aiokafka.structs import ConsumerRecord
    from kafka import body

    out = []
    for offset in range(first, first + count):
        value = body(offset * PARTITIONS + partition)
        out.append(
            ConsumerRecord(TOPIC, partition, offset, 0, 0, None, value, None, -1, len(value), ())
        )
    return out


def _all_records(events: int) -> Iterator[tuple[int, list[Any]]]:
    """Every record of ``events`` messages, a batch of up to ``BATCH`` of a partition at a time."""
    for partition, total in enumerate(_per_partition(events)):
        for first in range(0, total, BATCH):
            yield partition, _records(partition, first, min(BATCH, total - first))


class FeedConsumer:
    """Stands for ``AIOKafkaConsumer``: each ``getmany`` makes the next ``max_records``
    records of one partition (in turn) of :attr:`events` messages; ``commit`` keeps the
    offsets and tells when every record is committed."""

    events = 0

    def __init__(self, **_: Any) -> None:
        from aiokafka.structs import TopicPartition

        self._listener: Any = None
        self._totals = {
            TopicPartition(TOPIC, p): n for p, n in enumerate(_per_partition(self.events))
        }
        self._next = dict.fromkeys(self._totals, 0)
        self._turn = 0
        self.committed: dict[Any, int] = {}
        self.all_committed = asyncio.Event()
        self._client = None

    def subscribe(self, topics: Iterable[str], listener: Any) -> None:
        self._listener = listener

    async def start(self) -> None:
        await self._listener.on_partitions_assigned(set(self._totals))

    async def stop(self) -> None:
        return None

    async def topics(self) -> set[str]:
        return {TOPIC}

    def pause(self, *tps: Any) -> None:
        return None

    def resume(self, *tps: Any) -> None:
        return None

    async def getmany(self, *partitions: Any, timeout_ms: int, max_records: int) -> Any:
        await asyncio.sleep(0)  # a fetch answered at once, as aiokafka's prefetch does
        order = list(partitions or self._totals)
        for i in range(len(order)):
            tp = order[(self._turn + i) % len(order)]
            first = self._next[tp]
            count = min(max_records, BATCH, self._totals[tp] - first)
            if count > 0:
                self._turn += i + 1
                self._next[tp] = first + count
                return {tp: _records(tp.partition, first, count)}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.committed.update(offsets)
        if all(self.committed.get(tp) == n for tp, n in self._totals.items()):
            self.all_committed.set()


def _bench_saga(**source: Any) -> None:
    """Register ``kafka.py``'s saga with the trigger options ``source``."""
    from sagaz import Saga, SagaContext, action, trigger

    class KafkaBenchSaga(Saga):
        saga_name = "bench-kafka"

        @trigger(**source)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("noop")
        async def noop(self, ctx: SagaContext) -> None:
            return None


async def _kafka(events: int) -> None:
    """``kafka.py``'s sagaz run on the memory store, its consumer a :class:`FeedConsumer`."""
    import aiokafka
    from kafka import GROUP_TIMEOUTS

    from sagaz import TriggerConfig
    from sagaz.engine.engine import TriggerEngine
    from sagaz.storage.memory import MemorySagaStore
    from sagaz.triggers import registry

    registry.clear()
    FeedConsumer.events = events
    consumers: list[FeedConsumer] = []

    def make(**kwargs: Any) -> FeedConsumer:
        consumers.append(FeedConsumer(**kwargs))
        return consumers[-1]

    aiokafka.AIOKafkaConsumer = make
    _bench_saga(source="kafka", topic=TOPIC, group_id="bench", **GROUP_TIMEOUTS)
    try:
        async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
            while not consumers:
                await asyncio.sleep(0.001)
            await consumers[0].all_committed.wait()
            assert sum(engine.metrics.completed.values()) == events
    finally:
        registry.clear()


async def _admit(events: int) -> None:
    """The same records made into deliveries as the source makes them and admitted a poll
    (500) at a time with ``admit_many``, without the source (a memory trigger, same method)."""
    from sagaz import TriggerConfig
    from sagaz.engine.engine import TriggerEngine
    from sagaz.events import Delivery, EventMeta
    from sagaz.storage.memory import MemorySagaStore
    from sagaz.triggers import registry

    registry.clear()
    _bench_saga(source="memory", channel=TOPIC)
    try:
        async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
            assert engine.admission is not None
            [active] = engine.triggers.values()
            tid = active.trigger_id
            for partition, records in _all_records(events):
                batch = []
                for r in records:
                    number = str(r.offset)
                    meta = EventMeta(
                        "kafka",
                        tid,
                        f"{TOPIC}:{partition}:" + number,
                        TOPIC,
                        partition,
                        r.offset,
                        None,
                        {},
                        0.0,
                    )
                    batch.append(Delivery(r.value, meta, f"{TOPIC}/{partition}/" + number))
                await engine.admission.admit_many(active, batch)
            while sum(engine.metrics.completed.values()) < events:
                await asyncio.sleep(0.01)
    finally:
        registry.clear()


async def _base(events: int) -> None:
    """The records of ``events`` messages made and dropped."""
    for _ in _all_records(events):
        pass


VARIANTS = {"kafka": _kafka, "admit": _admit}


async def _child(events: int, which: str, base: bool) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    await VARIANTS[which](WARM_UP)
    await (_base if base else VARIANTS[which])(events)


def _start(events: int, which: str, base: bool = False, out: str = "") -> Any:
    args = ["--child", which, "--events", str(events), *(["--base"] if base else [])]
    if not out:
        return start(__file__, *args)
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        *args,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)


def main(events: int, callgrind: str | None) -> None:
    require_valgrind()
    if callgrind:
        Path(callgrind).mkdir(parents=True, exist_ok=True)
        runs = [_start(events, "kafka", b, f"{callgrind}/kafka-{b}.out") for b in (True, False)]
        for process in runs:
            process.communicate()
        print(f"callgrind profiles in {callgrind}")
        return
    runs = {(name, base): _start(events, name, base) for name in VARIANTS for base in (1, 0)}
    counts = {key: instructions(process) for key, process in runs.items()}
    per = {name: (counts[name, 0] - counts[name, 1]) / events for name in VARIANTS}
    print(f"messages: {events}")
    print(f"instructions per message: kafka {per['kafka']:,.0f}, admit {per['admit']:,.0f}")
    print(f"the source's own share (kafka - admit): {per['kafka'] - per['admit']:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--callgrind", help="write callgrind profiles of the kafka run here")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--base", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.events, args.child, args.base))
    else:
        main(args.events, args.callgrind)
