"""A saga's JSON texts kept between its writes: a saga is written three times or so
(created, running, completed) with the same event and, most often, the same context.

:class:`EncodedText` remembers the JSON text (:func:`sagaz.storage.codec.dumps`) of one value
and hands it back while the value is unchanged. A value counts as unchanged when a *snapshot*
of it (its structure with the exact type of every element, floats by their ``hex()``) is equal
to the one taken with the text, so ``1``, ``1.0`` and ``True``, or ``0.0`` and ``-0.0``, never
share a text; a value holding anything but ``dict`` (of ``str`` keys), ``list``, ``str``,
``int``, ``float``, ``bool`` and ``None`` is encoded every time. The text is the one ``dumps``
wrote for an equal value, so the stored data is the same as without it. A text longer than
:data:`MAX_TEXT` characters is not kept.

:class:`SagaJson` keeps a saga's context and event texts per saga id, bounded
(:data:`MAX_SAGAS`, the oldest go first); a store drops a saga's at its terminal write or its
deletion. Used by the Redis store (:mod:`sagaz.storage.redis.encoding`) and the PostgreSQL
store.

>>> texts = SagaJson()
>>> context, event = texts.memo("saga-1")
>>> context.encode({"id": 7})
'{"id":7}'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sagaz.storage.codec import dumps

__all__ = ["MAX_SAGAS", "MAX_TEXT", "EncodedText", "JsonMemo", "SagaJson", "SagaMemos"]

MAX_SAGAS = 4096
"""Sagas whose texts a store keeps at most (the oldest go first)."""

MAX_TEXT = 16_384
"""The longest text (in characters) kept for one value."""

_NO_TEXT = ""  # never a dumps() result


def _snapshot(value: Any, out: list[Any]) -> bool:
    """Append what identifies ``value`` exactly (types included) to ``out``; ``False`` when it
    holds a type this does not handle (the caller then encodes it every time)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        out += (kind, value)
    elif kind is float:
        out += (kind, value.hex())
    elif kind is dict:
        out += (kind, len(value))
        for key, item in value.items():
            if type(key) is not str:
                return False
            out.append(key)
            if not _snapshot(item, out):
                return False
    elif kind is list:
        out += (kind, len(value))
        for item in value:
            if not _snapshot(item, out):
                return False
    else:
        return False
    return True


class EncodedText:
    """A value's text and the snapshot it was encoded from (``None``: nothing kept): the
    text of one value of one saga (its context, its event), reused while it is unchanged."""

    __slots__ = ("snapshot", "text")

    def __init__(self) -> None:
        self.snapshot: list[Any] | None = None
        self.text = _NO_TEXT

    def encode(self, value: Any) -> str:
        """``dumps(value)``, the kept text while ``value`` is unchanged."""
        snapshot: list[Any] = []
        if not _snapshot(value, snapshot):
            self.snapshot = None
            return dumps(value)
        if snapshot != self.snapshot:
            text = dumps(value)
            if len(text) > MAX_TEXT:
                self.snapshot, self.text = None, _NO_TEXT
                return text
            self.text = text
            self.snapshot = snapshot
        return self.text


JsonMemo = tuple[EncodedText, EncodedText]
"""What :class:`SagaJson` keeps of one saga: its context's text and its event's."""

M = TypeVar("M")


class SagaMemos(Generic[M]):
    """What a store keeps of each saga it is writing, per saga id: made by ``make`` at the
    saga's first write, at most ``max_sagas`` of them (the oldest go first)."""

    def __init__(self, make: Callable[[], M], max_sagas: int = MAX_SAGAS) -> None:
        self.max_sagas = max_sagas
        self._make = make
        self._memos: dict[str, M] = {}

    def __len__(self) -> int:
        return len(self._memos)

    def memo(self, saga_id: str) -> M:
        """What is kept of ``saga_id``, made (evicting the oldest beyond the bound) if new."""
        memo = self._memos.get(saga_id)
        if memo is None:
            if len(self._memos) >= self.max_sagas:
                del self._memos[next(iter(self._memos))]
            memo = self._memos[saga_id] = self._make()
        return memo

    def forget(self, saga_id: str) -> None:
        """Drop what is kept of ``saga_id`` (its terminal write, its deletion)."""
        self._memos.pop(saga_id, None)


def _json_memo() -> JsonMemo:
    return (EncodedText(), EncodedText())


class SagaJson(SagaMemos[JsonMemo]):
    """The context's and the event's :class:`EncodedText` of the sagas a store is writing,
    per saga id (see the module)."""

    def __init__(self, max_sagas: int = MAX_SAGAS) -> None:
        super().__init__(_json_memo, max_sagas)
