"""Kafka partition bookkeeping and options, without a broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagaz.sources.kafka.commits import OffsetCommits
from sagaz.sources.kafka.partitions import PartitionState
from sagaz.sources.kafka.records import take_deliveries
from sagaz.triggers.options import KafkaOptions, parse_trigger_options


class Record(NamedTuple):
    offset: int


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=40),
    data=st.data(),
)
def test_commit_offset_never_passes_the_first_unsettled_offset(
    gaps: list[int], data: st.DataObject
) -> None:
    offsets, offset = [], 0
    for gap in gaps:  # gaps, as compaction and transaction markers leave them
        offsets.append(offset)
        offset += gap
    state = PartitionState(tp="t-0")
    assert state.track([Record(o) for o in offsets], received_at=None) == len(offsets)
    settled: set[int] = set()
    for o in data.draw(st.permutations(offsets)):
        state.settle(o)
        settled.add(o)
        unsettled = [x for x in offsets if x not in settled]
        if unsettled:
            done_before = [x for x in offsets if x < unsettled[0]]
            expected = done_before[-1] + 1 if done_before else None
        else:
            expected = offsets[-1] + 1
        assert state.commit_offset == expected
        assert (state.commit_offset or 0) <= (unsettled[0] if unsettled else expected)
    assert not state.outstanding
    assert not state.done


def test_track_skips_records_already_seen() -> None:
    state = PartitionState(tp="t-0")
    assert state.track([Record(0), Record(1)], received_at=None) == 2
    assert state.track([Record(1), Record(2)], received_at=None) == 1
    assert list(state.outstanding) == [0, 1, 2]


def test_commit_due_only_after_the_point_moved() -> None:
    state = PartitionState(tp="t-0")
    state.track([Record(0), Record(1)], received_at=None)
    assert not state.commit_due
    state.settle(1)
    assert not state.commit_due  # offset 0 still runs
    state.settle(0)
    assert state.commit_due
    assert state.commit_offset == 2
    state.committed_offset = 2
    assert not state.commit_due


def test_flow_pauses_when_full_and_resumes_half_drained() -> None:
    state = PartitionState(tp="t-0")
    state.track([Record(o) for o in range(4)], received_at=None)
    assert state.flow(max_buffered=4, max_unsettled=100) is True
    assert state.flow(max_buffered=4, max_unsettled=100) is None  # already paused
    state.buffer.popleft()
    assert state.flow(max_buffered=4, max_unsettled=100) is None  # 3 buffered > 4 // 2
    state.buffer.popleft()
    assert state.flow(max_buffered=4, max_unsettled=100) is False
    # emitted but unsettled events count too: a held event pauses the partition
    state.buffer.clear()
    assert state.flow(max_buffered=4, max_unsettled=4) is True
    state.settle(0)
    assert state.flow(max_buffered=4, max_unsettled=4) is False


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class FullRecord(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class Settled(OffsetCommits):
    """The settle half of a source, without a consumer (nothing is committed)."""

    def __init__(self, partition: PartitionState) -> None:
        self.options = KafkaOptions(topic="orders")
        self._partitions = {partition.tp: partition}
        self._settled_since_commit = 0
        self._commit_wanted = asyncio.Event()

    def _update_flow(self, partition: PartitionState) -> None:
        return None


async def test_records_become_deliveries_in_offset_order_and_their_acks_settle_offsets() -> None:
    state = PartitionState(tp=TopicPartition("orders", 2))
    received = datetime(2026, 1, 2, tzinfo=UTC)
    records = [
        FullRecord(7, b"cust-1", b'{"id": 1}', (("trace", b"t-1"), ("empty", None))),
        FullRecord(8, b"\xff\xfe", None, ()),  # a key that is not text; a tombstone
        FullRecord(9, None, b"x", ()),
    ]
    state.track(records, received_at=received)
    source = Settled(state)
    first, second = take_deliveries(source, "Shop.on_order", state, 2)
    assert len(state.buffer) == 1  # only what was asked is taken
    assert (first.payload, first.identity) == (b'{"id": 1}', "orders/2/7")
    meta = first.meta
    assert (meta.source, meta.trigger, meta.message_id) == ("kafka", "Shop.on_order", "orders:2:7")
    assert (meta.topic, meta.partition, meta.offset, meta.key) == ("orders", 2, 7, "cust-1")
    assert meta.headers == {"trace": "t-1", "empty": ""}
    assert (meta.received_at, meta.attempt) == (received, 1)
    assert (second.payload, second.meta.key, second.meta.headers) == (b"", b"\xff\xfe", {})
    await second.ack()
    assert state.commit_offset is None  # offset 7 still runs
    await first.nack(True)  # left for redelivery: not settled
    assert state.commit_offset is None
    await first.ack()  # the first call counted
    assert state.commit_offset is None
    (third,) = take_deliveries(source, "Shop.on_order", state, 1)
    await third.ack()
    assert state.commit_offset is None  # 8 and 9 are settled, behind 7
    assert (list(state.outstanding), state.done) == ([7, 8, 9], {8, 9})


async def test_a_records_ack_settles_its_offset_when_called_without_a_coroutine() -> None:
    """The ack is settled by the call itself (what it returns is already done), so a
    saga's settlement costs no coroutine per record."""
    state = PartitionState(tp=TopicPartition("orders", 0))
    state.track([FullRecord(0, None, b"a", ()), FullRecord(1, None, b"b", ())], received_at=None)
    first, second = take_deliveries(Settled(state), "Shop.on_order", state, 2)
    answer = first.ack()
    assert state.commit_offset == 1  # settled before anything awaited it
    assert not asyncio.iscoroutine(answer)
    await answer
    settling = second.nack(True)  # left for redelivery: nothing settled, nothing to run
    await settling
    assert state.commit_offset == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"missing required option\(s\) \['topic'\]"),
        ({"topic": []}, r"option topic=\[\] must be a topic name or a non-empty list"),
        ({"topic": ["ok", ""]}, "non-empty list"),
        ({"topic": "t", "group_id": ""}, "group_id='' must be a non-empty string"),
        ({"topic": "t", "auto_offset_reset": "first"}, "auto_offset_reset='first' must be one of"),
        ({"topic": "t", "commit_every": 0}, "commit_every=0 must be an integer >= 1"),
        ({"topic": "t", "poll_timeout_ms": True}, "poll_timeout_ms=True must be an integer"),
        ({"topic": "t", "session_timeout_ms": 1000, "heartbeat_interval_ms": 1000}, "lower than"),
        ({"topic": "t", "consumer_options": ["x"]}, r"consumer_options=\['x'\] must be a dict"),
        ({"topic": "t", "dead_letter_topic": ""}, "dead_letter_topic='' must be a non-empty"),
    ],
)
def test_bad_options_are_explained(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trigger_options("kafka", options)


def test_a_full_trigger_is_accepted() -> None:
    pipeline, options = parse_trigger_options(
        "kafka",
        {
            "topic": ["orders", "refunds"],
            "group_id": "svc",
            "bootstrap_servers": "kafka:9092",
            "commit_every": 10,
            "consumer_options": {"security_protocol": "SSL"},
            "dead_letter_topic": "orders.dlq",
        },
    )
    assert isinstance(options, KafkaOptions)
    assert options.topics == ["orders", "refunds"]
    assert (options.group_id, options.commit_every) == ("svc", 10)
    # the dead-letter topic is a pipeline option: the engine hands it to the source
    assert pipeline.dead_letter_topic == "orders.dlq"
    assert "dead_letter_topic" not in KafkaOptions.model_fields


async def test_records_of_two_polls_keep_each_poll_s_arrival_and_no_pair_per_record() -> None:
    state = PartitionState(tp=TopicPartition("orders", 0))
    first_poll, second_poll = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    older = [FullRecord(o, None, b"{}", ()) for o in (3, 4)]
    state.track(older, received_at=first_poll)
    state.track([FullRecord(o, None, b"{}", ()) for o in (4, 5, 6)], received_at=second_poll)
    # the buffer holds the records themselves (a deep buffer is promoted by the collector)
    assert list(state.buffer)[:2] == older and state.buffer[0] is older[0]
    source = Settled(state)
    taken = take_deliveries(source, "Shop.on_order", state, 3)
    taken += take_deliveries(source, "Shop.on_order", state, 1)
    assert [d.meta.offset for d in taken] == [3, 4, 5, 6]  # offset 4 once
    assert [d.meta.received_at for d in taken] == [first_poll, first_poll, second_poll, second_poll]
