"""``SagaContext``: the state a saga carries from step to step, plus its streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

from sagaz.exceptions import SagaStepError
from sagaz.records import OutboxMessage

__all__ = ["SagaContext", "StreamChannel", "StreamClosedError", "current_step"]

_END = object()

#: the step whose code is running (set by the executor in each step task)
current_step: ContextVar[str] = ContextVar("sagaz_current_step", default="")


class StreamClosedError(SagaStepError):
    """The consumer side of a stream went away (its step failed)."""


class StreamChannel:
    """A bounded async channel between a streaming action and the step that reads it.

    Memory stays bounded: the producer waits while ``maxsize`` records are unread.
    """

    def __init__(self, name: str, maxsize: int = 100) -> None:
        self.name = name
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._aborted = False
        self._detached = False
        self._taken = False

    async def put(self, record: Any) -> None:
        """Send one record (waits while the channel is full)."""
        if self._aborted:
            raise StreamClosedError(f"stream {self.name!r} was aborted: a step of the saga failed")
        if self._detached:
            return
        await self._queue.put(record)

    async def close(self) -> None:
        """Signal the end of the stream."""
        if not self._aborted and not self._detached:
            await self._queue.put(_END)

    def detach(self) -> None:
        """Nobody will read any more (every reader finished): discard further records."""
        self._detached = True
        while not self._queue.empty():
            self._queue.get_nowait()

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

    __slots__ = ("_data", "_outbox", "_streams", "attempt", "saga_id", "saga_name")

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
    def open_stream(self, name: str, maxsize: int = 100) -> StreamChannel:
        """Create the channel of streaming action ``name`` (called by the executor)."""
        channel = StreamChannel(name, maxsize)
        self._streams[name] = channel
        return channel

    def stream(self, name: str) -> AsyncIterator[Any]:
        """The records of streaming action ``name``, as they are yielded.

        >>> async for record in ctx.stream("extract"):  # doctest: +SKIP
        ...     ...
        """
        channel = self._streams.get(name)
        if channel is None:
            raise SagaStepError(
                f"no streaming action named {name!r} in saga {self.saga_name!r}: "
                "ctx.stream() takes the name of an @action that yields"
            )
        return channel.__aiter__()

    def abort_streams(self) -> None:
        """Release every producer and reader (a step failed)."""
        for channel in self._streams.values():
            channel.abort()

    # -- outbox ----------------------------------------------------------------------------
    def emit(self, topic: str, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Queue a message for the outbox; it is written in the same transaction as the
        checkpoint of the step that emitted it, and published by the ``OutboxRelay``."""
        step = current_step.get()
        if not step:
            raise SagaStepError("ctx.emit() can only be called from inside a step")
        self._outbox.setdefault(step, []).append(
            OutboxMessage(saga_id=self.saga_id, topic=topic, payload=payload, headers=headers or {})
        )

    def take_outbox(self, step: str) -> list[OutboxMessage]:
        """Remove and return the messages queued by ``step`` (called by the executor)."""
        return self._outbox.pop(step, [])
