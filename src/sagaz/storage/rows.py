"""How :class:`~sagaz.storage.memory.MemorySagaStore` keeps records: private copies.

Two compiled helpers per record class (as ``dataclasses`` compiles ``__init__``: straight-line
attribute copies are several times cheaper than a generic loop, and the memory store copies
every record it takes in and gives out):

* :func:`clone` — a copy of a record, nested JSON-like values copied too;
* :class:`RowCodec` — a record packed into a tuple of plain values (enum members as their
  values) and back. The busy tables (sagas, steps, inbox) keep such tuples: the cyclic garbage
  collector stops tracking a tuple of plain values, so a store holding many thousand sagas
  does not make every collection walk them (measured: full collections took 13% of the
  in-memory pipeline's time with records kept as objects).
"""

from __future__ import annotations

import copy
import dataclasses
import marshal
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

__all__ = ["RowCodec", "clone", "copy_value", "freeze", "thaw"]

R = TypeVar("R")
_ATOMIC = (str, int, float, bool, type(None), bytes)
#: fields that hold JSON-like data the caller could mutate after handing it over
_NESTED = frozenset({"context", "result", "event", "payload", "headers", "meta"})


def copy_value(value: Any) -> Any:
    """A deep copy of JSON-like data, much cheaper than ``copy.deepcopy``: a ``marshal``
    round trip (C code) where it applies, a recursive copy where it does not (datetimes,
    objects)."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:  # unmarshallable: an object somewhere inside
        return _copy_slow(value)


def _copy_slow(value: Any) -> Any:
    if isinstance(value, _ATOMIC):
        return value
    if isinstance(value, dict):
        return {k: _copy_slow(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_slow(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy_slow(v) for v in value)
    return copy.deepcopy(value)


_PLAIN = frozenset({str, int, float, bool, type(None)})
#: an empty dict frozen (the context of a pending saga, the result of a step that returns
#: nothing: in nearly every saga), made once: ``marshal.dumps`` costs ~1,500 instructions
#: even for ``{}``, and :func:`thaw` still makes a new dict of it each time
_EMPTY_DICT = marshal.dumps({})


def freeze(value: Any) -> Any:
    """``value`` as a row keeps it: plain scalars as they are, containers and bytes as
    ``marshal`` bytes (which the garbage collector does not track), anything else copied."""
    if type(value) in _PLAIN:
        return value
    if type(value) is dict and not value:
        return _EMPTY_DICT
    try:
        return marshal.dumps(value)
    except ValueError:
        return _copy_slow(value)


def thaw(value: Any) -> Any:
    """A private copy of a value :func:`freeze` made."""
    if type(value) in _PLAIN:
        return value
    if type(value) is bytes:
        return marshal.loads(value)
    return _copy_slow(value)


def _namespace(cls: type, **extra: Any) -> dict[str, Any]:
    return {
        "new": object.__new__,
        "cls": cls,
        "atomic": frozenset(_ATOMIC),
        "copy_value": copy_value,
        **extra,
    }


def _compile(source: list[str], namespace: dict[str, Any], name: str) -> Callable[..., Any]:
    exec("\n".join(source), namespace)
    compiled: Callable[..., Any] = namespace[name]
    return compiled


def _nested(target: str, source: str) -> list[str]:
    """Lines that set ``target`` to a private copy of ``source`` (plain values as they are)."""
    return [
        f"    v = {source}",
        f"    {target} = v if v is None or type(v) in atomic else copy_value(v)",
    ]


def _frozen(target: str, source: str) -> list[str]:
    """Lines that set ``target`` to :func:`freeze` of ``source``, without the call (plain
    scalars, ``None`` above all, as they are)."""
    return [
        f"    {target} = {source}",
        f"    if type({target}) not in plain:",
        f"        if type({target}) is dict and not {target}:",
        f"            {target} = empty_dict",
        "        else:",
        "            try:",
        f"                {target} = dumps({target})",
        "            except ValueError:",
        f"                {target} = copy_slow({target})",
    ]


def _make_cloner(cls: type) -> Callable[[Any], Any]:
    lines = ["def clone(r):", "    c = new(cls)"]
    for field in dataclasses.fields(cls):
        name = field.name
        if name in _NESTED:
            lines += _nested(f"c.{name}", f"r.{name}")
        else:
            lines.append(f"    c.{name} = r.{name}")
    lines.append("    return c")
    return _compile(lines, _namespace(cls), "clone")


_CLONERS: dict[type, Callable[[Any], Any]] = {}


def clone(record: R) -> R:
    """Copy a record so callers cannot change stored state by mutation (and vice versa)."""
    cls = type(record)
    cloner = _CLONERS.get(cls)
    if cloner is None:
        cloner = _CLONERS[cls] = _make_cloner(cls)
    copied: R = cloner(record)
    return copied


def _enum_type(hint: Any) -> type[Enum] | None:
    """The enum class of a field annotated ``E`` or ``E | None``."""
    candidates = typing.get_args(hint) or (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Enum):
            return candidate
    return None


class RowCodec(Generic[R]):
    """Packs records of one dataclass into tuples of plain values, and unpacks them.

    Both directions copy nested values, so a packed row shares nothing with the caller's
    record. ``index[name]`` is the tuple position of a field (for filters on packed rows);
    an enum field holds the member's value, which compares equal to the member (``StrEnum``).
    """

    def __init__(self, cls: type[R]) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        self.index: dict[str, int] = {f.name: i for i, f in enumerate(fields)}
        members: dict[str, dict[Any, Enum]] = {}
        pack = ["def pack(r):"]
        stamped = ["def stamped(r, created, updated):"]
        unpack = ["def unpack(t):", "    c = new(cls)"]
        values: list[str] = []
        stamped_values: list[str] = []
        for i, field in enumerate(fields):
            name = field.name
            enum = _enum_type(hints[name])
            if name in _NESTED:
                # freeze() inline: a row is packed several times per saga, and the call
                # would cost more than the marshal itself
                frozen = _frozen(f"n{i}", f"r.{name}")
                pack += frozen
                stamped += frozen
                value = f"n{i}"
                unpack.append(f"    c.{name} = thaw(t[{i}])")
            elif enum is not None:
                members[f"m{i}"] = {m.value: m for m in enum}
                value = f"(None if r.{name} is None else r.{name}._value_)"
                unpack.append(f"    c.{name} = None if t[{i}] is None else m{i}[t[{i}]]")
            else:
                value = f"r.{name}"
                unpack.append(f"    c.{name} = t[{i}]")
            values.append(value)
            stamped_values.append(
                "created" if name == "created_at" else "updated" if name == "updated_at" else value
            )
        pack.append(f"    return ({', '.join(values)},)")
        stamped.append(f"    return ({', '.join(stamped_values)},)")
        unpack.append("    return c")
        namespace = _namespace(
            cls,
            dumps=marshal.dumps,
            copy_slow=_copy_slow,
            thaw=thaw,
            plain=_PLAIN,
            empty_dict=_EMPTY_DICT,
            **members,
        )
        self.pack: Callable[[R], tuple[Any, ...]] = _compile(pack, namespace, "pack")
        #: ``pack`` with ``created_at`` and ``updated_at`` (where the record has them) taken
        #: from the arguments instead of the record, which is left as it is
        self.stamped: Callable[[R, Any, Any], tuple[Any, ...]] = _compile(
            stamped, namespace, "stamped"
        )
        self.unpack: Callable[[tuple[Any, ...]], R] = _compile(unpack, namespace, "unpack")

    def replace(self, row: tuple[Any, ...], **changes: Any) -> tuple[Any, ...]:
        """``row`` with some fields changed (plain values: enum members as their values)."""
        values = list(row)
        for name, value in changes.items():
            values[self.index[name]] = value.value if isinstance(value, Enum) else value
        return tuple(values)
