"""``SagaContext``: the state a saga carries from step to step, plus its streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

from sagaz import tracing
from sagaz.exceptions import SagaStepError
from sagaz.records import OutboxMessage

__all__ = [
    "SagaContext",
    "StreamChannel",
    "StreamClosedError",
    "current_step",
    "describe_streams",
]

_END = object()
#: a detached channel lets the event loop run once per this many dropped records
_DRAIN_BATCH = 64

#: the step whose code is running (set by the executor in each step task)
current_step: ContextVar[str] = ContextVar("sagaz_current_step", default="")


def describe_streams(streams: Iterable[str]) -> str:
    """The end of an unknown-stream error: which streams the saga has."""
    names = sorted(streams)
    if not names:
        return "the saga has no streaming action (an @action whose method yields)"
    return f"the saga's streams: {names}"


class StreamClosedError(SagaStepError):
    """The consumer side of a stream went away (its step failed)."""


class StreamChannel:
    """A bounded async channel between a streaming action and the step that reads it.

    Memory stays bounded: the producer waits while ``maxsize`` records are unread. Once nobody
    will read any more (no step reads the stream, or every reader finished), the channel is
    *detached*: the producer runs to completion and its records are counted, then dropped.
    """

    def __init__(self, name: str, maxsize: int = 100) -> None:
        self.name = name
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._aborted = False
        self._detached = False
        self._closed = False
        self._taken = False
        #: records the producer yielded
        self.yielded = 0
        #: records dropped because nobody was going to read them
        self.discarded = 0

    @property
    def detached(self) -> bool:
        """Nobody reads any more: records are counted and dropped."""
        return self._detached

    @property
    def closed(self) -> bool:
        """The producer finished."""
        return self._closed

    async def put(self, record: Any) -> None:
        """Send one record (waits while the channel is full)."""
        if self._aborted:
            raise StreamClosedError(f"stream {self.name!r} was aborted: a step of the saga failed")
        self.yielded += 1
        if self._detached:
            self.discarded += 1
            if self.discarded % _DRAIN_BATCH == 0:
                # a producer that never awaits must still let timeouts and other sagas run
                await asyncio.sleep(0)
            return
        await self._queue.put(record)
        if self._detached:  # detached while this put waited for room: nobody takes the record
            self._drop_queued()

    async def close(self) -> None:
        """Signal the end of the stream."""
        self._closed = True
        if not self._aborted and not self._detached:
            await self._queue.put(_END)

    def detach(self) -> None:
        """Nobody will read any more (every reader finished): discard further records."""
        if self._detached:
            return
        self._detached = True
        self._drop_queued()

    def _drop_queued(self) -> None:
        while not self._queue.empty():
            if self._queue.get_nowait() is not _END:
                self.discarded += 1

    def abort(self) -> None:
        """Stop the stream from either side; a waiting producer or reader is released."""
        self._aborted = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        if self._taken:
            raise SagaStepError(f"stream {self.name!r} can be read by one step only")
        self._taken = True
        while True:
            record = await self._queue.get()
            if record is _END:
                if self._aborted:
                    raise StreamClosedError(
                        f"stream {self.name!r} was aborted: a step of the saga failed"
                    )
                return
            yield record


class SagaContext(MutableMapping[str, Any]):
    """A dict of the saga's data (JSON-serialisable) with saga helpers.

    Steps read it like a dict (``ctx["order_id"]``, ``ctx.get("x")``); the dict a step returns
    is merged into it and checkpointed. ``ctx.stream(name)`` reads a streaming action's records;
    ``ctx.emit(topic, payload)`` queues an outbox message written with the step's checkpoint.
    """

    __slots__ = ("_data", "_outbox", "_readers", "_streams", "attempt", "saga_id", "saga_name")

    def __init__(
        self,
        data: MutableMapping[str, Any] | None = None,
        *,
        saga_id: str = "",
        saga_name: str = "",
        attempt: int = 1,
    ) -> None:
        self._data: dict[str, Any] = dict(data or {})
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.attempt = attempt
        self._streams: dict[str, StreamChannel] = {}
        #: the saga's streaming actions and, for each, the steps that may read it
        self._readers: Mapping[str, tuple[str, ...]] = {}
        self._outbox: dict[str, list[OutboxMessage]] = {}

    # -- mapping ---------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"SagaContext({self._data!r}, saga_id={self.saga_id!r})"

    def update(self, other: Any = (), /, **values: Any) -> None:
        """Merge a mapping (or key/value pairs) into the context, as ``dict.update`` does."""
        self._data.update(other, **values)

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict copy of the data."""
        return dict(self._data)

    # -- streams ---------------------------------------------------------------------------
    def declare_streams(self, readers: Mapping[str, tuple[str, ...]]) -> None:
        """Name the saga's streaming actions and their readers (called by the executor)."""
        self._readers = readers

    def open_stream(self, name: str, maxsize: int = 100) -> StreamChannel:
        """Create the channel of streaming action ``name`` (called by the executor)."""
        channel = StreamChannel(name, maxsize)
        self._streams[name] = channel
        return channel

    def stream(self, name: str) -> AsyncIterator[Any]:
        """The records of streaming action ``name``, as they are yielded.

        Only a step that depends on ``name`` reads it (in a saga without ``depends_on``, the
        step declared right after it).

        >>> async for record in ctx.stream("extract"):  # doctest: +SKIP
        ...     ...
        """
        step = current_step.get()
        reader = f"step {step!r} of saga {self.saga_name!r}" if step else f"saga {self.saga_name!r}"
        if name not in self._readers:
            raise SagaStepError(
                f"{reader} called ctx.stream({name!r}), but no streaming action is named "
                f"{name!r}; {describe_streams(self._readers)}"
            )
        if step and step not in self._readers[name]:
            raise SagaStepError(
                f"{reader} reads ctx.stream({name!r}) but does not depend on {name!r}: "
                f"add depends_on=[{name!r}] (or declare the step right after {name!r})"
            )
        channel = self._streams.get(name)
        if channel is None:
            raise SagaStepError(
                f"{reader} called ctx.stream({name!r}) while {name!r} is not being produced: "
                "only the steps that depend on a streaming action read it"
            )
        return channel.__aiter__()

    def abort_streams(self) -> None:
        """Release every producer and reader (a step failed)."""
        for channel in self._streams.values():
            channel.abort()

    # -- outbox ----------------------------------------------------------------------------
    def emit(self, topic: str, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Queue a message for the outbox; it is written in the same transaction as the
        checkpoint of the step that emitted it, and published by the ``OutboxRelay``.

        While tracing is on (:mod:`sagaz.tracing`) its headers also carry the step's trace
        context (``traceparent``...); ``headers`` given here win."""
        step = current_step.get()
        if not step:
            raise SagaStepError("ctx.emit() can only be called from inside a step")
        headers = {**tracing.outgoing_headers(), **(headers or {})}
        self._outbox.setdefault(step, []).append(
            OutboxMessage(saga_id=self.saga_id, topic=topic, payload=payload, headers=headers)
        )

    def take_outbox(self, step: str) -> list[OutboxMessage]:
        """Remove and return the messages queued by ``step`` (called by the executor)."""
        return self._outbox.pop(step, [])
