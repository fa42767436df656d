"""The pieces of the Redis store's group commit that need no server: the command packer,
the RESP2 reply parsers, hiredis's and the Python fallback (replies split anywhere by the
network) and the groups' bookkeeping.
The store itself, over a real server, is in tests/contract/test_store_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from sagaz._redis_pool import pack_command
from sagaz.storage.group_commit import HandOver
from sagaz.storage.redis_pipeline import Command, CommandGroups
from sagaz.storage.redis_replies import (
    HIREDIS_AVAILABLE,
    PythonReplyReader,
    ReplyError,
    ReplyReader,
    reply_reader,
)

pytest.importorskip("redis")

REPLIES = (
    b":1\r\n"
    b"$5\r\nhello\r\n"
    b"$-1\r\n"
    b"*3\r\n:7\r\n$0\r\n\r\n*2\r\n+OK\r\n$3\r\n\xc3\xa9t\r\n"
    b"*-1\r\n"
    b"*0\r\n"
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    b"$4\r\na\r\nb\r\n"  # CRLF inside a bulk string
    b"*2\r\n-ERR inside \xc3\xa9\xff\r\n:-3\r\n"  # an error in an array, undecodable
)
PARSED = [
    1,
    b"hello",
    None,
    [7, b"", [b"OK", "\u00e9t".encode()]],
    None,
    [],
    ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    b"a\r\nb",
    [ReplyError("ERR inside \u00e9\ufffd"), -3],
]
DECODED = [
    1,
    "hello",
    None,
    [7, "", ["OK", "\u00e9t"]],
    None,
    [],
    PARSED[6],
    "a\r\nb",
    PARSED[8],
]

# both parsers: hiredis's (the redis extra installs it) and the Python fallback
READERS = ["hiredis", "python"]


def _reader(kind: str, encoding: str | None = None) -> ReplyReader:
    if kind == "python":
        return reply_reader(encoding, native=False)
    assert HIREDIS_AVAILABLE, "hiredis is missing: pip install -e '.[test]' (the redis extra)"
    return reply_reader(encoding)


def _read_all(reader: ReplyReader) -> list[Any]:
    replies = []
    while (reply := reader.gets()) is not False:
        replies.append(reply)
    return replies


def test_the_readers_are_hiredis_and_python() -> None:
    assert type(_reader("hiredis")).__module__.startswith("hiredis")
    assert isinstance(_reader("python"), PythonReplyReader)


@pytest.mark.parametrize("kind", READERS)
@pytest.mark.parametrize(("encoding", "expected"), [(None, PARSED), ("utf-8", DECODED)])
def test_replies_parse_whole(kind: str, encoding: str | None, expected: list[Any]) -> None:
    reader = _reader(kind, encoding)
    reader.feed(REPLIES)
    assert _read_all(reader) == expected
    assert not reader.has_data()


@pytest.mark.parametrize("kind", READERS)
@pytest.mark.parametrize("cut", range(1, len(REPLIES)))
def test_a_reply_cut_anywhere_waits_for_the_rest(kind: str, cut: int) -> None:
    """What arrived so far parses up to the last whole reply, then asks for more."""
    reader = _reader(kind)
    reader.feed(REPLIES[:cut])
    replies = _read_all(reader)
    assert replies == PARSED[: len(replies)]
    assert len(replies) < len(PARSED)
    reader.feed(REPLIES[cut:])
    assert replies + _read_all(reader) == PARSED
    assert not reader.has_data()


@pytest.mark.parametrize("kind", READERS)
def test_a_protocol_error_raises_redis_pys_error(kind: str) -> None:
    from redis.exceptions import InvalidResponse

    reader = _reader(kind)
    reader.feed(b"?what\r\n")
    with pytest.raises(InvalidResponse, match='got "\\?" as reply type byte'):
        reader.gets()


PACKED_ARGS = [
    ("SET", "k", 1),
    ("SCRIPT LOAD", "return 1"),
    ("EVALSHA", "abc", 2, "k1", "k2", "\u00e9t\u00e9", b"\x00\xff", -5, "\r\n"),
    ("HSET", "h", "f", "x" * 10_000),
    ("HSET", "h", "", "x" * 4095, "y" * 4096, "\u00e9" * 3000),
    ("EVALSHA", "abc", 1, "k", *(f"arg-{n}" for n in range(40))),
]


@pytest.mark.parametrize("native", [True, False], ids=["hiredis", "python"])
@pytest.mark.parametrize("args", PACKED_ARGS)
def test_commands_pack_as_redis_py_packs_them(args: tuple[Any, ...], native: bool) -> None:
    from redis.asyncio.connection import Connection

    expected = b"".join(Connection()._pack_command_python(*args))
    assert pack_command(args, "utf-8", "strict", native=native) == expected


@pytest.mark.parametrize("native", [True, False], ids=["hiredis", "python"])
@pytest.mark.parametrize("args", [("SET", "k", 1.5), ("SET", "k", True), (b"GET", "k")])
def test_other_arguments_are_left_to_redis_py(args: tuple[Any, ...], native: bool) -> None:
    assert pack_command(args, "utf-8", "strict", native=native) is None


def test_hiredis_packs_only_utf8_text() -> None:
    """Another encoding is written by the Python packer, in that encoding."""
    assert pack_command(("SET", "k", "\u00e9"), "latin-1", "strict") == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    )


async def test_callers_of_one_group_get_their_own_replies_and_errors() -> None:
    sent: list[list[Command]] = []

    async def send(commands: list[Command]) -> Sequence[Any]:
        sent.append(commands)
        await asyncio.sleep(0)  # a round trip
        return [ValueError(a[1]) if a[1] == "bad" else a[1] for a, _ in commands]

    groups = CommandGroups(send, max_in_flight=1)
    results = await asyncio.gather(
        *(groups.execute("ECHO", name) for name in ("a", "bad", "c")),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError)
    assert [len(group) for group in sent] == [3]
    assert (groups.groups_sent, groups.commands_sent) == (1, 3)


async def test_a_failed_round_trip_fails_each_caller_with_an_error_of_its_own() -> None:
    async def send(commands: list[Command]) -> Sequence[Any]:
        raise ConnectionResetError("gone")

    groups = CommandGroups(send, translate=lambda exc: RuntimeError(f"away: {exc}"))
    results = await asyncio.gather(
        *(groups.execute("PING") for _ in range(3)), return_exceptions=True
    )
    assert [str(r) for r in results] == ["away: gone"] * 3
    assert len({id(r) for r in results}) == 3
    assert all(isinstance(r.__cause__, ConnectionResetError) for r in results)  # type: ignore[union-attr]


async def test_commands_queued_while_groups_are_out_go_in_the_next_one() -> None:
    release = asyncio.Event()
    sent: list[int] = []

    async def send(commands: list[Command]) -> Sequence[Any]:
        sent.append(len(commands))
        await release.wait()
        return [None] * len(commands)

    groups = CommandGroups(send, max_in_flight=1)
    first = asyncio.ensure_future(groups.execute("PING"))
    await asyncio.sleep(0.01)  # the first group is out
    later = [asyncio.ensure_future(groups.execute("PING")) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *later)
    await groups.drain()
    assert sent == [1, 5]


async def _echoes(groups: CommandGroups, name: str, rounds: int) -> list[Any]:
    """One caller sending ``rounds`` commands, each awaited before the next."""
    return [await groups.execute("ECHO", f"{name}-{n}") for n in range(rounds)]


async def test_a_group_back_while_none_other_is_out_is_handed_over_in_two_halves() -> None:
    sent: list[list[str]] = []

    async def send(commands: list[Command]) -> Sequence[Any]:
        sent.append([a[1] for a, _ in commands])
        await asyncio.sleep(0)  # a round trip
        return [a[1] for a, _ in commands]

    groups = CommandGroups(send, max_in_flight=2)
    groups._handing = HandOver(lambda: None)  # cores free or not known: it halves
    results = await asyncio.gather(*(_echoes(groups, f"c{k}", 3) for k in range(20)))
    assert results == [[f"c{k}-{n}" for n in range(3)] for k in range(20)]
    assert sent[0] == [f"c{k}-0" for k in range(20)]
    # the first half ran on to its next command, sent before the second half had its replies
    assert sent[1] == [f"c{k}-1" for k in range(10)]
    await groups.drain()


async def test_a_group_back_while_another_is_out_is_handed_over_at_once() -> None:
    release = asyncio.Event()
    sent: list[list[str]] = []

    async def send(commands: list[Command]) -> Sequence[Any]:
        sent.append([a[1] for a, _ in commands])
        if commands[0][0][1] == "held":
            await release.wait()  # this group stays out until released
        await asyncio.sleep(0)
        return [a[1] for a, _ in commands]

    groups = CommandGroups(send, max_in_flight=2)
    groups._handing = HandOver(lambda: None)  # cores free or not known: it halves
    held = asyncio.ensure_future(groups.execute("ECHO", "held"))
    await asyncio.sleep(0.01)  # out, and stays out
    results = await asyncio.gather(*(_echoes(groups, f"c{k}", 2) for k in range(20)))
    assert results == [[f"c{k}-{n}" for n in range(2)] for k in range(20)]
    # back while "held" was out: all twenty replies at once, one next group
    assert sent[1:3] == [[f"c{k}-0" for k in range(20)], [f"c{k}-1" for k in range(20)]]
    release.set()
    assert await held == "held"
    await groups.drain()
