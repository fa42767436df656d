"""``source="redis"`` (Redis Streams) against the real local Redis, driven by a recording emit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from sagaz.exceptions import MissingExtraError
from sagaz.records import DeadLetterRecord
from sagaz.sources import redis as redis_source
from sagaz.sources.redis import RedisStreamSource
from sagaz.testing import continually, eventually
from sagaz.triggers.options import RedisOptions, parse_trigger_options
from tests.fixtures_redis import GROUP, Streams, kill_connections_of
from tests.recording_emit import RecordingEmit, consuming, source_context, stop_intake
from tests.services import unique_name


def make_source(
    streams: Streams, stream: str, dead_letter_topic: str | None = None, **options: Any
) -> RedisStreamSource:
    ctx = source_context(
        unique_name("saga") + ".on_event",
        redis_url=streams.url,
        dead_letter_topic=dead_letter_topic,
    )
    return redis_source.create(RedisOptions(stream=stream, consumer_group=GROUP, **options), ctx)


def payloads(count: int, prefix: str = "m") -> list[bytes]:
    return [json.dumps({"n": f"{prefix}{i}"}).encode() for i in range(count)]


async def expect_nothing_more(streams: Streams, stream: str, emit: RecordingEmit) -> None:
    """Add a sentinel and wait for it: it must be the only delivery."""
    before = len(emit.deliveries)
    await streams.add(stream, [b"sentinel"])
    await emit.wait_for(before + 1)
    assert emit.payloads[before:] == [b"sentinel"]


async def test_raw_client_round_trip(streams: Streams) -> None:
    stream = streams.name()
    await streams.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    (entry_id,) = await streams.add(stream, [b"hello"])
    reply = await streams.client.xreadgroup(GROUP, "c1", {stream: ">"}, count=10)
    assert reply == [[stream.encode(), [(entry_id.encode(), {b"data": b"hello"})]]]
    assert await streams.client.xack(stream, GROUP, entry_id) == 1
    assert await streams.pending(stream) == 0


async def test_thousand_entries_acked_are_not_redelivered(streams: Streams) -> None:
    stream = streams.name()
    source = make_source(streams, stream)
    await source.start()  # creates the group (at the beginning of the empty stream)
    sent = payloads(1000)
    ids = await streams.add(stream, sent)

    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        await emit.wait_for(1000)
    assert emit.payloads == sent  # one consumer reads a stream in order
    assert emit.identities == [f"{stream}/{i}" for i in ids]
    assert {d.meta.attempt for d in emit.deliveries} == {1}
    assert await streams.pending(stream) == 0
    assert await streams.consumers(stream) == {}  # an empty consumer leaves the group

    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(streams, stream), again):
        await expect_nothing_more(streams, stream, again)


async def test_entries_added_before_the_first_start_are_consumed(streams: Streams) -> None:
    # a producer that runs before the first deployment of its consumers loses nothing: a new
    # group starts at the beginning of the stream, as a Kafka group starts at "earliest"
    stream = streams.name()
    sent = payloads(3, prefix="early")
    await streams.add(stream, sent)
    source = make_source(streams, stream)
    await source.start()
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        await emit.wait_for(3)
        assert emit.payloads == sent
        await expect_nothing_more(streams, stream, emit)


async def test_start_id_dollar_skips_what_the_stream_held_before_the_group(
    streams: Streams,
) -> None:
    stream = streams.name()
    await streams.add(stream, [b"before the group"])
    source = make_source(streams, stream, start_id="$")
    await source.start()
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        await expect_nothing_more(streams, stream, emit)


async def test_unacked_and_nacked_entries_come_back_after_restart(streams: Streams) -> None:
    stream = streams.name()
    await streams.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = await streams.add(stream, payloads(10))

    emit = RecordingEmit()
    source = make_source(streams, stream, consumer="worker-1")
    async with consuming(source, emit) as task:
        deliveries = await emit.wait_for(10)
        for delivery in deliveries[:6]:
            await delivery.ack()
        # the engine's shutdown: stop intake, nack the interrupted, leave the rest un-acked
        await stop_intake(task)
        for delivery in deliveries[6:8]:
            await delivery.nack(True)
    assert await streams.consumers(stream) == {"worker-1": 4}

    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(streams, stream, consumer="worker-1"), again):
        redelivered = await again.wait_for(4)
        assert [d.meta.message_id for d in redelivered] == ids[6:]
        assert {d.meta.attempt for d in redelivered} == {2}
        await expect_nothing_more(streams, stream, again)
    assert await streams.pending(stream) == 0


async def test_entries_of_a_dead_consumer_are_claimed(streams: Streams) -> None:
    stream = streams.name()
    await streams.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = await streams.add(stream, payloads(5))

    dead = RecordingEmit()
    async with consuming(make_source(streams, stream, consumer="dies"), dead):
        await dead.wait_for(5)  # received, never acked: then the process "dies"
    assert await streams.consumers(stream) == {"dies": 5}

    survivor = RecordingEmit(auto_ack=True)
    source = make_source(streams, stream, consumer="survives", claim_idle_ms=200)
    async with consuming(source, survivor):
        claimed = await survivor.wait_for(5)
        assert [d.meta.message_id for d in claimed] == ids
        assert {d.meta.attempt for d in claimed} == {2}
        await expect_nothing_more(streams, stream, survivor)
    assert await streams.pending(stream) == 0


async def test_entries_in_flight_are_not_claimed_from_a_live_consumer(streams: Streams) -> None:
    stream = streams.name()
    await streams.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await streams.add(stream, payloads(3))
    busy, idle = RecordingEmit(), RecordingEmit()
    # the heartbeat refreshes every claim_idle_ms / 3: a second leaves it room for a stall of
    # the event loop under a loaded parallel run (with 300 ms, 200 ms of slack, it failed once
    # in a full parallel run)
    claim_idle_ms = 1000
    slow = make_source(streams, stream, consumer="slow", claim_idle_ms=claim_idle_ms)
    other = make_source(streams, stream, consumer="other", claim_idle_ms=claim_idle_ms)
    async with consuming(slow, busy):
        await busy.wait_for(3)  # three long sagas start
        async with consuming(other, idle):

            async def kept_fresh_by_slow() -> bool:
                rows = await streams.client.xpending_range(stream, GROUP, "-", "+", 10)
                return {r["consumer"] for r in rows} == {b"slow"} and max(
                    r["time_since_delivered"] for r in rows
                ) < claim_idle_ms

            await continually(
                kept_fresh_by_slow,
                during=3 * claim_idle_ms / 1000,  # 3 claim periods
                interval=0.02,
                what="the slow consumer keeping its entries fresh",
            )
        assert idle.deliveries == []
        for delivery in busy.deliveries:
            await delivery.ack()
    assert await streams.pending(stream) == 0


async def test_payload_rule_and_metadata(streams: Streams) -> None:
    stream = streams.name()
    source = make_source(streams, stream)
    await source.start()
    entries: list[dict[str, Any]] = [
        {"data": b"raw"},
        {"payload": b'{"x": 1}'},
        {"body": "text"},
        {"user": "ada", "amount": "12"},
        {"data": "x", "other": "y"},
    ]
    ids = [(await streams.client.xadd(stream, fields)).decode() for fields in entries]
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        got = await emit.wait_for(5)
    assert [d.payload for d in got] == [
        b"raw",
        b'{"x": 1}',
        b"text",
        {"user": "ada", "amount": "12"},
        {"data": "x", "other": "y"},
    ]
    assert [d.decoded for d in got] == [False, False, False, True, True]
    first = got[0]
    assert first.identity == f"{stream}/{ids[0]}"
    assert (first.meta.source, first.meta.topic, first.meta.message_id) == (
        "redis",
        stream,
        ids[0],
    )
    assert first.meta.trigger == source.trigger_id


async def test_dead_letter_is_added_to_the_dead_letter_stream(streams: Streams) -> None:
    stream, dead_letters = streams.name(), streams.name()
    source = make_source(streams, stream, dead_letter_topic=dead_letters)
    await source.start()
    (entry_id,) = await streams.add(stream, [b'{"bad": true}'])
    emit = RecordingEmit()
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1)
        record = DeadLetterRecord(
            trigger_id=source.trigger_id,
            saga_name="test-saga",
            payload={"bad": True},
            error="ValueError: bad event",
            reason="invalid",
            attempts=3,
            saga_id="saga-1",
        )
        await source.publish_dead_letter(delivery, record)
        await delivery.ack()

    ((_, fields),) = await streams.client.xrange(dead_letters)
    assert fields == {
        b"payload": b'{"bad": true}',
        b"error": b"ValueError: bad event",
        b"reason": b"invalid",
        b"attempts": b"3",
        b"trigger": source.trigger_id.encode(),
        b"stream": stream.encode(),
        b"entry_id": entry_id.encode(),
        b"saga_id": b"saga-1",
    }
    assert await streams.pending(stream) == 0


async def test_reconnects_after_its_connection_is_killed(streams: Streams) -> None:
    stream = streams.name()
    emit = RecordingEmit()
    source = make_source(streams, stream, claim_idle_ms=500)
    await source.start()
    first = payloads(50, "a")
    await streams.add(stream, first)
    async with consuming(source, emit):
        deliveries = await emit.wait_for(50)
        for delivery in deliveries[:40]:
            await delivery.ack()
        assert await kill_connections_of(streams, source) >= 1
        for delivery in deliveries[40:]:
            await delivery.ack()  # XACK is not tied to the connection: it still counts
        second = payloads(50, "b")
        await streams.add(stream, second)
        await emit.wait_for(100)
        assert await kill_connections_of(streams, source) >= 1  # killed while blocked
        third = payloads(10, "c")
        await streams.add(stream, third)
        await emit.wait_for(110)
        for delivery in emit.deliveries[50:]:
            await delivery.ack()
        assert emit.payloads == first + second + third
        assert await streams.pending(stream) == 0
    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(streams, stream), again):
        await expect_nothing_more(streams, stream, again)


async def test_an_ack_waits_for_a_connection_when_all_are_busy(streams: Streams) -> None:
    """More commands at once than the client's connection pool holds (redis-py 8 caps a
    pool at 100 and fails the rest with ``MaxConnectionsError``): an ack waits for a free
    connection; it is neither failed nor, after its retries, silently left pending."""
    stream, blocker = streams.name(), streams.name()
    source = make_source(streams, stream)
    await source.start()
    await streams.add(stream, [b"finished"])
    emit = RecordingEmit()
    async with consuming(source, emit) as task:
        (delivery,) = await emit.wait_for(1)
        await stop_intake(task)
        client: Any = source._redis
        # XREAD of a missing stream from 0 blocks until the first XADD: each holds a connection
        busy = [
            asyncio.create_task(client.xread({blocker: "0-0"}, block=5_000)) for _ in range(120)
        ]
        await eventually(lambda: blocked_on(streams, source), what="blocked XREADs")
        ack = asyncio.create_task(delivery.ack())
        await asyncio.sleep(1.8)  # longer than its retries (pauses of at most 0.05, 0.25, 1 s)
        await streams.client.xadd(blocker, {"data": b"go"})
        await ack
        assert await streams.pending(stream) == 0
        replies = await asyncio.gather(*busy, return_exceptions=True)
        assert [r for r in replies if isinstance(r, Exception)] == []


async def blocked_on(streams: Streams, source: RedisStreamSource) -> bool:
    name = f"sagaz:{source.consumer}"
    return any(
        c["name"] == name and c["cmd"] == "xread" for c in await streams.client.client_list()
    )


async def test_recreates_a_vanished_group(streams: Streams) -> None:
    stream = streams.name()
    errors: list[BaseException] = []
    ctx = source_context(unique_name("saga") + ".on_event", errors, redis_url=streams.url)
    source = redis_source.create(RedisOptions(stream=stream, consumer_group=GROUP), ctx)
    await source.start()
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        await streams.add(stream, [b"before"])
        await emit.wait_for(1)
        await streams.client.delete(stream)  # as after a restart of a Redis without persistence
        # Redis answers the blocked read with UNBLOCKED, or the next one with NOGROUP
        await eventually(lambda: bool(errors), what="the missing group to be reported")
        assert str(errors[0]).startswith(("NOGROUP", "UNBLOCKED"))

        await eventually(lambda: streams.client.exists(stream), what="the group recreated")
        await streams.add(stream, [b"after"])
        await emit.wait_for(2)
    assert emit.payloads == [b"before", b"after"]


async def test_a_group_vanishing_while_pending_entries_are_counted_is_recreated(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delivery counts of recovered or claimed entries come from a pipeline, whose error
    # redis-py prefixes with "Command # 1 (...)": a NOGROUP there ended run() instead of
    # recreating the group. The stream is deleted (as by a Redis restart) right between the
    # read of the pending entries and the pipeline, where a real restart lands by chance.
    stream = streams.name()
    await streams.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await streams.add(stream, [b"pending"])
    first = RecordingEmit()
    async with consuming(make_source(streams, stream, consumer="c"), first):
        await first.wait_for(1)  # read, never acked: pending for "c"

    errors: list[BaseException] = []
    ctx = source_context(unique_name("saga") + ".on_event", errors, redis_url=streams.url)
    source = redis_source.create(
        RedisOptions(stream=stream, consumer_group=GROUP, consumer="c"), ctx
    )
    counts = source._delivery_counts

    async def vanishing_first(entries: Any) -> dict[str, int]:
        monkeypatch.setattr(source, "_delivery_counts", counts)
        await streams.client.delete(stream)
        return await counts(entries)

    monkeypatch.setattr(source, "_delivery_counts", vanishing_first)
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit) as task:
        await eventually(lambda: bool(errors), what="the missing group to be reported")
        assert str(errors[0]).startswith("NOGROUP")
        await eventually(lambda: streams.client.exists(stream), what="the group recreated")
        assert not task.done()
        await streams.add(stream, [b"after"])
        await emit.wait_for(1)
    assert emit.payloads == [b"after"]


async def test_a_cancel_the_driver_swallows_still_ends_run(streams: Streams) -> None:
    # redis-py has been seen to turn a cancel landing in a command into an ordinary outcome
    # (a reply, sagaz.sources.redis._raise_if_cancelled); here into a lost link, after which
    # the server stays unreachable. run() retried with a backoff for ever: the cancel was
    # spent, and no turn of its loop asked whether the task was cancelling, so stopping the
    # source hung (as a CI run once did, 180 s, with the heartbeat alive).
    stream = streams.name()
    source = make_source(streams, stream)
    await source.start()
    entered = asyncio.Event()
    errors = source._errors
    swallowed = False

    async def xreadgroup(*args: Any, **kwargs: Any) -> Any:
        nonlocal swallowed
        if swallowed:
            raise errors.ConnectionError("Connection refused")
        entered.set()
        try:
            await asyncio.Event().wait()  # a blocking read
        except asyncio.CancelledError:
            swallowed = True
            raise errors.ConnectionError("Connection closed by server") from None

    source._redis.xreadgroup = xreadgroup  # type: ignore[method-assign]
    task = asyncio.create_task(source.run(RecordingEmit()))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "run() went on after its cancel was swallowed"
        assert task.cancelled()
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        await source.stop()


async def test_a_cancel_the_driver_swallows_still_ends_the_heartbeat(streams: Streams) -> None:
    # The same in the heartbeat's XCLAIM of entries in flight, turned into a RedisError (which
    # the heartbeat logs and goes on from): it looped for ever, so stop() waited on it for
    # ever; the test's own cancel, landing in that wait, was swallowed there too. A CI run and
    # a loop of this file hung so, the heartbeat's 0.33 s sleep the loop's only timer.
    stream = streams.name()
    await streams.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await streams.add(stream, [b"in flight"])
    source = make_source(streams, stream, claim_idle_ms=150)  # a heartbeat every 50 ms
    emit = RecordingEmit()
    entered = asyncio.Event()
    errors = source._errors

    async def xclaim(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise errors.ConnectionError("Connection closed by server") from None

    async with consuming(source, emit):
        await emit.wait_for(1)  # never acked: in flight, kept fresh
        source._redis.xclaim = xclaim  # type: ignore[method-assign]
        await asyncio.wait_for(entered.wait(), 10)
        heartbeat = source._heartbeat
        assert heartbeat is not None
        stopping = asyncio.create_task(source.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        if not done:  # unstuck (a second cancel, the real XCLAIM), so the test fails, not hangs
            del source._redis.xclaim
            heartbeat.cancel()
            await stopping
        assert done, "stop() waited for a heartbeat that went on after its cancel"
        stopping.result()


async def test_unreachable_redis_is_reported_and_retried() -> None:
    errors: list[BaseException] = []
    ctx = source_context("saga.on_event", errors, redis_url="redis://127.0.0.1:1/0")
    source = redis_source.create(RedisOptions(stream="s"), ctx)
    emit = RecordingEmit()
    async with consuming(source, emit) as task:
        await eventually(lambda: len(errors) >= 2, what="two reported connection failures")
        assert not task.done()  # it keeps trying
    assert emit.deliveries == []


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[redis\]"'):
        redis_source.create(RedisOptions(stream="s"), source_context())


def test_importing_the_module_does_not_import_the_driver() -> None:
    code = "import sys, sagaz.sources.redis; assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_defaults_come_from_the_trigger_and_the_process() -> None:
    source = redis_source.create(RedisOptions(stream="s"), source_context("orders.on_order"))
    assert source.consumer_group == "orders.on_order"
    other = redis_source.create(RedisOptions(stream="s"), source_context("orders.on_order"))
    assert source.consumer != other.consumer  # unique per process and instance
    assert (source.claim_idle_ms, source.start_id) == (60_000, "0")
    assert (source.url, source.batch_size, source.block_ms) == (
        "redis://localhost:6379/0",
        100,
        1000,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stream": ""}, "stream='' must be a non-empty string"),
        ({"stream": "s", "consumer_group": ""}, "consumer_group='' must be a non-empty string"),
        ({"stream": "s", "start_id": "1"}, "start_id='1' must be one of '\\$', '0'"),
        ({"stream": "s", "claim_idle_ms": 0}, "claim_idle_ms=0 must be an integer >= 1"),
        ({"stream": "s", "batch_size": True}, "batch_size=True must be an integer >= 1"),
        ({"stream": "s", "url": "http://x"}, "redis://"),
    ],
)
def test_bad_options_are_explained(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trigger_options("redis", options)
