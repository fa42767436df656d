"""RESP2 replies read from the bytes a Redis connection receives, for the store's group commit
(:func:`sagaz.storage.redis_pipeline.send_resp2`).

:func:`reply_reader` returns ``hiredis.Reader`` (C) when the ``hiredis`` package is installed
(the ``redis`` extra installs it), else :class:`PythonReplyReader`, which has the same
interface: ``feed(bytes)`` what arrived, then ``gets()`` one reply after another until it
returns ``False`` (the rest has not arrived yet). An error reply (``-ERR ...``) comes back as
a :class:`ReplyError` instance, in place of the reply, on both.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol


def _import_hiredis() -> Any:
    """The ``hiredis`` module (C parser and packer), or ``None`` when it is not installed."""
    try:
        return importlib.import_module("hiredis")
    except ImportError:  # pragma: no cover - the redis extra installs it
        return None


_hiredis = _import_hiredis()

__all__ = [
    "HIREDIS_AVAILABLE",
    "PythonReplyReader",
    "ReplyError",
    "ReplyReader",
    "decode_reply",
    "reply_reader",
]

HIREDIS_AVAILABLE = _hiredis is not None
"""Whether :func:`reply_reader` returns hiredis's reader."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``) in place of a reply; its ``message`` is the line after
    the ``-``, decoded (undecodable bytes replaced). The caller makes redis-py's exception of
    it (``ResponseError`` and kin)."""

    @property
    def message(self) -> str:
        """The error line: ``"WRONGTYPE Operation against..."``."""
        return str(self.args[0])

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.args == self.args

    def __hash__(self) -> int:
        return hash(self.args)


class ReplyReader(Protocol):
    """What the store reads replies with: ``hiredis.Reader`` or :class:`PythonReplyReader`."""

    def feed(self, data: bytes, /) -> None:
        """Append bytes received."""

    def gets(self) -> Any:
        """The next whole reply, or ``False`` when the bytes fed end before it does."""

    def has_data(self) -> bool:
        """Whether bytes fed are left over (a partial reply)."""


def reply_reader(
    encoding: str | None = None, errors: str = "strict", *, native: bool = True
) -> ReplyReader:
    """A reader of RESP2 replies: hiredis's when installed (and ``native``), else
    :class:`PythonReplyReader`. With an ``encoding``, text (bulk and simple strings) comes
    back decoded, else as bytes; a protocol error raises redis-py's ``InvalidResponse``."""
    if native and _hiredis is not None:
        from redis.exceptions import InvalidResponse

        text = {} if encoding is None else {"encoding": encoding, "errors": errors}
        reader: ReplyReader = _hiredis.Reader(
            replyError=ReplyError, protocolError=InvalidResponse, **text
        )
        return reader
    return PythonReplyReader(encoding, errors)


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


class PythonReplyReader:
    """``hiredis.Reader``'s work in Python: RESP2 replies parsed from the bytes fed so far
    (the fallback of :func:`reply_reader`)."""

    def __init__(self, encoding: str | None = None, errors: str = "strict") -> None:
        self._encoding = encoding
        self._errors = errors
        self._buffer = b""
        self._position = 0

    def feed(self, data: bytes, /) -> None:
        """Append bytes received."""
        self._buffer = self._buffer[self._position :] + data
        self._position = 0

    def gets(self) -> Any:
        """The next whole reply, or ``False`` when the bytes fed end before it does."""
        try:
            reply, self._position = _parse(self._buffer, self._position)
        except _Incomplete:
            return False
        if self._encoding is not None:
            return decode_reply(reply, self._encoding, self._errors)
        return reply

    def has_data(self) -> bool:
        """Whether bytes fed are left over (a partial reply)."""
        return self._position < len(self._buffer)


def _parse(buffer: bytes, position: int) -> tuple[Any, int]:
    """The RESP2 reply at ``position`` of ``buffer`` (bytes, not decoded) and where the next
    starts; raises :class:`_Incomplete` when the buffer ends first."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    kind, line, position = buffer[position], buffer[position + 1 : end], end + 2
    if kind == 58:  # ":" integer
        return int(line), position
    if kind == 36:  # "$" bulk string, -1: nil
        size = int(line)
        if size < 0:
            return None, position
        stop = position + size
        if len(buffer) < stop + 2:
            raise _Incomplete
        return buffer[position:stop], stop + 2
    if kind == 42:  # "*" array, -1: nil
        size = int(line)
        if size < 0:
            return None, position
        items = []
        for _ in range(size):
            item, position = _parse(buffer, position)
            items.append(item)
        return items, position
    if kind == 43:  # "+" simple string
        return line, position
    if kind == 45:  # "-" error
        return ReplyError(line.decode("utf-8", errors="replace")), position
    from redis.exceptions import InvalidResponse

    raise InvalidResponse(f'Protocol error, got "{chr(kind)}" as reply type byte')


def decode_reply(reply: Any, encoding: str, errors: str) -> Any:
    """``reply`` (as a reader without encoding returns it) with its bytes decoded."""
    if type(reply) is bytes:
        return reply.decode(encoding, errors)
    if type(reply) is list:
        return [decode_reply(item, encoding, errors) for item in reply]
    return reply
