"""Group commit for :class:`~sagaz.storage.redis.RedisSagaStore`: every command it sends shares
a round trip with the commands issued at the same time.

The store talks to Redis only through the client :func:`grouped_client` makes. That client's
``execute_command`` (which every redis-py command method, ``Script.__call__`` included, ends
in) and its non-transactional pipelines do not touch a connection: they queue their commands
in a :class:`CommandGroups`, which sends whatever is queued as one pipeline
(``transaction=False``) and hands each caller its own reply, or its own error, once that
pipeline came back. While ``max_in_flight`` pipelines are out, new commands wait for the next
one, so many concurrent sagas share a round trip and the store needs only a few connections.
A group back while no other is out is handed to its callers in two halves while the process
has a core to spare (:class:`~sagaz.storage.group_commit.HandOver`), so Redis and the
process work at the same time instead of in turn.
An operation added to the store later goes through the same groups without doing anything.

Each command keeps its own semantics: a Lua script stays atomic, a failing one fails alone
(its caller gets the ``ResponseError``, the others their replies), and the commands of one
pipeline object go out together and in order. A lost link fails every command of the group
it broke, each caller with its own error made by ``translate`` from the driver's (the store
makes :class:`~sagaz.exceptions.StoreUnavailableError`), so an operation added later raises
it without doing anything either. A caller cancelled before its command was sent drops it;
once sent, it runs. ``MULTI``/``EXEC`` pipelines (``transaction=True``) are not grouped: they
take a connection of their own.

On a pool whose connections speak RESP2 (``protocol=2``, as the store's do), a group is sent
and its replies read by :func:`send_resp2` rather than by redis-py's pipeline, whose per-reply
work was most of the store's CPU time: the replies are parsed by hiredis when it is installed,
else in Python (:mod:`sagaz.storage.redis_replies`); commands are packed by the pool's
connections (:func:`sagaz._redis_pool.pack_command`, hiredis's packer when installed).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sagaz.storage.group_commit import HandOver
from sagaz.storage.redis_replies import ReplyError, ReplyReader, decode_reply, reply_reader

__all__ = ["Command", "CommandGroups", "grouped_client"]

Command = tuple[tuple[Any, ...], Mapping[str, Any]]
"""One redis-py command: its arguments (name first) and its ``execute_command`` options."""

SendGroup = Callable[[list[Command]], Awaitable[Sequence[Any]]]
"""Sends commands in one round trip; returns one reply per command, an error as its
exception instance (redis-py's ``Pipeline.execute(raise_on_error=False)``)."""


_NO_OPTIONS: Mapping[str, Any] = {}


@dataclass(slots=True)
class _Queued:
    """A command waiting for its group."""

    command: Command
    reply: asyncio.Future[Any]


class CommandGroups:
    """Queues commands and sends them in groups through ``send``, at most ``max_in_flight``
    groups at once and at most ``max_group`` commands in one. When ``send`` raises, every
    caller of the group gets ``translate(error)`` (a new exception each), else the error.

    ``groups_sent`` and ``commands_sent`` count what went out (tests, benchmarks)."""

    def __init__(
        self,
        send: SendGroup,
        *,
        max_in_flight: int = 2,
        max_group: int = 1000,
        translate: Callable[[Exception], Exception] | None = None,
    ) -> None:
        if max_in_flight < 1 or max_group < 1:
            raise ValueError(f"{max_in_flight=} and {max_group=} must be at least 1")
        self._send = send
        self._translate = translate
        self.max_in_flight = max_in_flight
        self.max_group = max_group
        self._queued: list[_Queued] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._sending = 0  # senders still taking groups (a finished task leaves the set later)
        self.groups_sent = 0
        self.commands_sent = 0
        self._in_flight = 0
        self._handing = HandOver()

    def submit(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Queue ``commands`` (they go out together, in order); one future per reply."""
        loop = asyncio.get_running_loop()
        queued = [_Queued(command, loop.create_future()) for command in commands]
        self._queued.extend(queued)
        if self._sending < self.max_in_flight:
            self._start_sender(loop)
        return [q.reply for q in queued]

    def submit_one(
        self, args: tuple[Any, ...], options: Mapping[str, Any] = _NO_OPTIONS
    ) -> asyncio.Future[Any]:
        """Queue one command (``args``: its name first); the future of its reply, which the
        caller awaits (:meth:`submit` of one command, for the most frequent case)."""
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        self._queued.append(_Queued((args, options), reply))
        if self._sending < self.max_in_flight:
            self._start_sender(loop)
        return reply

    async def execute(self, *args: Any, **options: Any) -> Any:
        """Send one command with the next group; its reply once that group came back."""
        return await self.submit_one(args, options)

    def _start_sender(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sending += 1
        sender = loop.create_task(self._run(), name="sagaz-redis-store-group")
        self._senders.add(sender)
        sender.add_done_callback(self._senders.discard)

    async def drain(self) -> None:
        """Wait until every queued command was sent and answered."""
        while self._senders:
            await asyncio.wait(set(self._senders))

    async def _run(self) -> None:
        try:
            while self._queued:
                taken = self._queued[: self.max_group]
                del self._queued[: self.max_group]
                group = [q for q in taken if not q.reply.done()]  # done: its caller is gone
                if group:
                    await self._send_group(group)
        finally:
            self._sending -= 1  # at once: a command queued from now on starts a sender

    async def _send_group(self, group: list[_Queued]) -> None:
        self.groups_sent += 1
        self.commands_sent += len(group)
        self._in_flight += 1
        try:
            replies = await self._send([q.command for q in group])
        except BaseException as exc:  # the link (or the loop) went away: all of them fail
            for queued in group:
                if not queued.reply.done():
                    queued.reply.set_exception(self._error(exc))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
        await self._handing(group, replies, _give, alone=not self._in_flight)

    def _error(self, exc: BaseException) -> BaseException:
        if self._translate is None or not isinstance(exc, Exception):
            return exc
        error = self._translate(exc)
        if error is not exc:
            error.__cause__ = exc
        return error


def _give(queued: _Queued, reply: Any) -> None:
    """Hand ``reply`` (an exception instance for an error) to its caller, unless gone."""
    if queued.reply.done():
        return
    if isinstance(reply, Exception):
        queued.reply.set_exception(reply)
    else:
        queued.reply.set_result(reply)


def grouped_client(
    pool: Any,
    *,
    max_in_flight: int = 2,
    max_group: int = 1000,
    translate: Callable[[Exception], Exception] | None = None,
) -> Any:
    """A ``redis.asyncio.Redis`` on connection ``pool`` whose commands and non-transactional
    pipelines go through one :class:`CommandGroups` (its ``groups`` attribute; the keyword
    arguments are its own)."""
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.exceptions import ResponseError

    class GroupedPipeline(Pipeline):
        """A ``transaction=False`` pipeline whose ``execute`` joins the next group."""

        groups: CommandGroups

        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            stack, self.command_stack = self.command_stack, []
            if not stack:
                return []
            replies = self.groups.submit(stack)
            try:
                await asyncio.wait(replies)
            finally:
                for reply in replies:
                    reply.cancel()  # no-op on the answered ones
            results = [r.exception() or r.result() for r in replies]
            # as redis-py's own pipeline: a lost link raises whatever raise_on_error says, a
            # command's error (ResponseError) only with raise_on_error
            failed = [e for e in results if isinstance(e, Exception)]
            lost = [e for e in failed if not isinstance(e, ResponseError)]
            if lost or (failed and raise_on_error):
                raise (lost or failed)[0]
            return results

    class GroupedRedis(Redis):
        """``redis.asyncio.Redis`` whose every command joins the next group."""

        groups: CommandGroups

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            return await self.groups.execute(*args, **options)

        def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
            if transaction:
                return super().pipeline(transaction, shard_hint)
            pipe = GroupedPipeline(self.connection_pool, self.response_callbacks, False, None)
            pipe.groups = self.groups
            return pipe

    async def send(commands: list[Command]) -> Sequence[Any]:
        if str(pool.connection_kwargs.get("protocol")) == "2":
            return await send_resp2(pool, client, commands)
        pipe = Pipeline(pool, client.response_callbacks, False, None)
        for args, options in commands:
            pipe.pipeline_execute_command(*args, **options)  # type: ignore[no-untyped-call]
        replies: Sequence[Any] = await pipe.execute(raise_on_error=False)
        return replies

    client = GroupedRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as Redis.from_pool: aclose() closes the pool
    client.groups = CommandGroups(
        send, max_in_flight=max_in_flight, max_group=max_group, translate=translate
    )
    return client


_NOT_CALLBACK_OPTIONS = frozenset({"NEVER_DECODE", "EMPTY_RESPONSE", "keys"})
"""``execute_command`` options that redis-py's response callbacks are not passed."""

# the store's scripts have no response callback: found without redis-py's case-insensitive
# lookup (the callbacks of other commands are looked up once per group)
_NO_CALLBACKS: dict[Any, Any] = {"EVALSHA": None}


async def send_resp2(pool: Any, client: Any, commands: list[Command]) -> list[Any]:
    """Send ``commands`` on one connection of ``pool`` and read their RESP2 replies at once.

    What redis-py's ``Pipeline.execute(raise_on_error=False)`` does, for a connection speaking
    RESP2 (no push messages: every byte read is a reply), minus its per-reply cost: one
    timeout for the whole group instead of one per reply, and the replies parsed from the
    bytes as they arrive instead of a buffered ``readline`` per line (most of the store's
    CPU time). Replies then go through ``client``'s response callbacks as redis-py's would.
    A connection that failed midway is dropped, never handed back with replies on it.
    """
    from redis.exceptions import ConnectionError, ResponseError

    encoder = pool.get_encoder()
    # the reader decodes the text of every reply, unless a command wants its bytes (redis-py:
    # the option's presence, DUMP passes an empty list)
    decode = encoder.decode_responses and not any("NEVER_DECODE" in o for _, o in commands)
    conn = await pool.get_connection()
    try:
        parse_error = conn._parser.parse_error
        await conn.send_packed_command(conn.pack_commands([args for args, _ in commands]))
        reader = reply_reader(encoder.encoding if decode else None, encoder.encoding_errors)
        async with asyncio.timeout(conn.socket_timeout):
            raw = await _read_replies(conn._reader, reader, len(commands))
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    replies: list[Any] = []
    decode_here = not decode and encoder.decode_responses
    callbacks, found = client.response_callbacks, _NO_CALLBACKS.copy()
    for (args, options), reply in zip(commands, raw, strict=True):
        if isinstance(reply, ReplyError):
            error = parse_error(reply.message)
            if isinstance(error, ConnectionError):  # e.g. LOADING: the server is not ready
                raise error
            assert isinstance(error, ResponseError)
            replies.append(options.get("EMPTY_RESPONSE", error))
            continue
        if decode_here and "NEVER_DECODE" not in options:
            reply = decode_reply(reply, encoder.encoding, encoder.encoding_errors)
        name = args[0]
        callback = found[name] if name in found else found.setdefault(name, callbacks.get(name))
        if callback is not None:
            options = {k: v for k, v in options.items() if k not in _NOT_CALLBACK_OPTIONS}
            reply = callback(reply, **options)
            if inspect.isawaitable(reply):
                reply = await reply
        replies.append(reply)
    return replies


async def _read_replies(stream: asyncio.StreamReader, reader: ReplyReader, count: int) -> list[Any]:
    """``count`` replies read from ``stream`` with ``reader``; nothing may follow them."""
    from redis.exceptions import ConnectionError

    replies: list[Any] = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:  # RESP2 has no false: the rest has not arrived yet
            data = await stream.read(1 << 16)
            if not data:
                raise ConnectionError("Connection closed by server.")
            reader.feed(data)
        else:
            replies.append(reply)
    if reader.has_data():
        raise ConnectionError("bytes after the last reply")
    return replies
