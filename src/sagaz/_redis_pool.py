"""A bounded, blocking redis-py connection pool for sagaz's Redis clients.

``Redis.from_url`` makes a ``ConnectionPool`` that fails a command at once
(``MaxConnectionsError``) when all its connections (redis-py 8: 100) are in use, which under
load looks like a lost server. :func:`blocking_pool` makes a ``BlockingConnectionPool``
instead: a command waits up to ``timeout`` seconds for a free connection, then fails with a
message that names the user and the two knobs. Its connections encode commands with
:func:`pack_command` (redis-py's own packer encodes argument by argument in Python, with or
without hiredis). redis-py is imported when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from sagaz._imports import require_extra

try:  # hiredis packs a command in C
    _hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None = importlib.import_module(
        "hiredis"
    ).pack_command
except ImportError:  # pragma: no cover - the redis extra installs it
    _hiredis_pack = None

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_POOL_TIMEOUT", "blocking_pool", "pack_command"]

DEFAULT_MAX_CONNECTIONS = 20
"""Connections a sagaz Redis client opens at most, unless told otherwise."""

DEFAULT_POOL_TIMEOUT = 20.0
"""Seconds a command waits for a free connection before it fails."""


def blocking_pool(
    url: str,
    *,
    user: str,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    timeout: float = DEFAULT_POOL_TIMEOUT,
    **connection_options: Any,
) -> Any:
    """A ``redis.asyncio.BlockingConnectionPool`` for ``url`` of at most ``max_connections``
    connections; ``user`` (e.g. ``"RedisSagaStore"``) names it in the error a command gets
    after waiting ``timeout`` seconds for one. ``connection_options`` go to each connection
    (``decode_responses``, ``socket_timeout``, ``client_name``...).

    >>> pool = blocking_pool("redis://localhost", user="app", max_connections=5)  # doctest: +SKIP
    """
    redis_asyncio = require_extra("redis", "redis.asyncio")
    errors = require_extra("redis", "redis.exceptions")
    if isinstance(max_connections, bool) or max_connections < 1:
        raise ValueError(f"max_connections={max_connections!r} must be a positive integer")

    class Pool(redis_asyncio.BlockingConnectionPool):  # type: ignore[misc, name-defined]
        """Says who ran out of connections, and what to change."""

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().get_connection(*args, **kwargs)
            except errors.ConnectionError as exc:
                if str(exc) != "No connection available.":
                    raise
                raise errors.ConnectionError(
                    f"{user}: no Redis connection became free within {timeout:g} s (all "
                    f"{max_connections} in use); pass a larger max_connections= or "
                    "pool_timeout=, or run fewer commands at once"
                ) from exc

    pool = Pool.from_url(
        url, max_connections=max_connections, timeout=timeout, **connection_options
    )
    base = pool.connection_class  # TCP, TLS or Unix socket, from the URL

    class Connection(base):  # type: ignore[misc, valid-type]
        """Packs commands of text, bytes and integers itself (see :func:`pack_command`)."""

        def pack_command(self, *args: Any) -> list[bytes]:
            packed = pack_command(args, self.encoder.encoding, self.encoder.encoding_errors)
            if packed is not None:
                return [packed]
            return list(super().pack_command(*args))

        def pack_commands(self, commands: Iterable[tuple[Any, ...]]) -> list[bytes]:
            # one bytes object: the transport joins redis-py's pieces anyway
            encoding, errors = self.encoder.encoding, self.encoder.encoding_errors
            pieces: list[bytes] = []
            for args in commands:
                packed = pack_command(args, encoding, errors)
                if packed is None:
                    pieces += super().pack_command(*args)
                else:
                    pieces.append(packed)
            return [b"".join(pieces)]

    pool.connection_class = Connection
    return pool


#: the "$len" header of a text of each length up to 4095 characters
_LENGTHS = tuple(f"${n}" for n in range(4096))

#: the argument types hiredis's packer writes as redis-py does (not float: its decimal text
#: may differ from redis-py's repr(); not bool, which redis-py refuses)
_HIREDIS_TYPES = frozenset({str, bytes, int})

#: the names of the encoding hiredis writes text in
_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})


def pack_command(
    args: tuple[Any, ...], encoding: str, errors: str, *, native: bool = True
) -> bytes | None:
    """``args`` (the command's name first) in the Redis protocol, or ``None`` when one is not
    ``str``, ``bytes`` or ``int`` (redis-py packs those).

    redis-py's pure-Python packer grows one bytes object argument by argument (quadratic in
    the command's length), and with hiredis installed it still encodes each argument in
    Python before hiredis packs them; the store's scripts take some thirty arguments. This
    one has hiredis pack them all at once when it is installed (and ``native``) and the text
    is UTF-8, else joins the pieces once in Python. Same output: a multi-word name
    (``"SCRIPT LOAD"``) is split, text is encoded with the connection's ``encoding``,
    integers are written in decimal.

    >>> pack_command(("SET", "k", 1), "utf-8", "strict")
    b'*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n'
    """
    name = args[0]
    if type(name) is not str:
        return None
    if (
        native
        and _hiredis_pack is not None
        and _HIREDIS_TYPES.issuperset(map(type, args))
        and encoding in _UTF8
        and errors == "strict"
    ):
        if " " in name:
            args = (*name.split(), *args[1:])
        return _hiredis_pack(args)
    texts = [*name.split(), *[a if type(a) is str else None for a in args[1:]]]
    for i in range(len(texts)) if None in texts else ():  # integers as decimal text
        if texts[i] is None:
            arg = args[i - len(texts) + len(args)]
            if type(arg) is not int:
                return _pack_pieces(texts, args, encoding, errors)
            texts[i] = str(arg)
    # "*N", then "$len" and the text of each argument, CRLF between and after them all: one
    # join (the "$len" of a short text looked up, not formatted)
    count = len(texts)
    parts = [""] * (2 * count + 2)
    parts[0] = f"*{count}"
    try:
        parts[1:-1:2] = [_LENGTHS[len(t)] for t in texts]  # type: ignore[arg-type]
    except IndexError:  # a text of _LENGTHS' length or more
        parts[1:-1:2] = [f"${len(t)}" for t in texts]  # type: ignore[arg-type]
    parts[2:-1:2] = texts  # type: ignore[assignment]
    body = "\r\n".join(parts)
    if body.isascii():  # one character per byte: len() was the length in bytes
        return body.encode("ascii")
    return _pack_pieces(texts, args, encoding, errors)


def _pack_pieces(
    texts: list[str | None], args: tuple[Any, ...], encoding: str, errors: str
) -> bytes | None:
    """:func:`pack_command` argument by argument: non-ASCII text, bytes."""
    offset = len(texts) - len(args)  # the name's extra words
    pieces = [b"*%d\r\n" % len(texts)]
    for i, text in enumerate(texts):
        if text is not None:
            data = text.encode(encoding, errors)
        else:
            arg = args[i - offset]
            kind = type(arg)
            if kind is int:
                data = b"%d" % arg
            elif kind is bytes:
                data = arg
            else:
                return None
        pieces.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(pieces)
