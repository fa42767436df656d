"""How the durable stores turn records into JSON and timestamps into sortable values.

Contexts, step results, event payloads and outbox payloads are stored as JSON. Values JSON has no
type for are wrapped in a one-key *envelope* so they come back as they went in:

>>> loads(dumps({"raw": b"\\x00\\xff"}))
{'raw': b'\\x00\\xff'}

``bytes`` → ``{"$sagaz:bytes": "<base64>"}``, ``datetime`` → ``{"$sagaz:datetime": "<iso>"}``,
and a user dict whose keys start with ``$sagaz:`` is escaped so it never reads as an envelope.
Tuples come back as lists (JSON has no tuple). Anything else is refused with a
:class:`~sagaz.exceptions.StoreError` that says which value to convert.

Record timestamps must be aware datetimes; they are stored in UTC, either as fixed-width ISO
text (SQLite: sorts as text) or as integer microseconds (Redis scores).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sagaz.exceptions import UnstorableValueError

__all__ = [
    "BYTES_TAG",
    "DATETIME_TAG",
    "DICT_TAG",
    "decode_value",
    "dumps",
    "encode_value",
    "from_micros",
    "from_text",
    "loads",
    "plain_json",
    "to_micros",
    "to_text",
    "to_utc",
]

BYTES_TAG = "$sagaz:bytes"
"""Envelope key of a ``bytes`` value (base64 text)."""
DATETIME_TAG = "$sagaz:datetime"
"""Envelope key of a ``datetime`` value (ISO 8601 text)."""
DICT_TAG = "$sagaz:dict"
"""Envelope key of a user dict whose own keys start with ``$sagaz:``."""

_TAG_PREFIX = "$sagaz:"
_SCALARS = frozenset({str, int, float, bool})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_value(value: Any, *, _path: str = "value") -> Any:
    """``value`` as plain JSON types, with bytes and datetimes in envelopes."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        encoded: dict[str, Any] = {}
        tagged = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnstorableValueError(
                    f"cannot store {_path}: key {key!r} is a {type(key).__name__}, but JSON "
                    "object keys must be strings; convert the key with str() before storing"
                )
            if key[:1] == "$" and key.startswith(_TAG_PREFIX):
                tagged = True
            # a plain scalar (most values) is itself: no call, no path text made for it
            encoded[key] = (
                item
                if item is None or type(item) in _SCALARS
                else encode_value(item, _path=f"{_path}[{key!r}]")
            )
        return {DICT_TAG: encoded} if tagged else encoded
    if isinstance(value, list | tuple):
        return [encode_value(item, _path=f"{_path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {DATETIME_TAG: value.isoformat()}
    raise UnstorableValueError(
        f"cannot store {_path} of type {type(value).__name__}: a durable store keeps JSON "
        "(dict, list, str, int, float, bool, None) plus bytes and datetime; convert it first, "
        "e.g. model.model_dump(mode='json') for pydantic or dataclasses.asdict()"
    )


def decode_value(value: Any) -> Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == BYTES_TAG:
                return base64.b64decode(inner)
            if key == DATETIME_TAG:
                return datetime.fromisoformat(inner)
            if key == DICT_TAG:
                return {k: decode_value(v) for k, v in inner.items()}
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    return value


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ``json.dumps(..., separators=(",", ":"), allow_nan=False)`` builds a JSONEncoder and its C
# encoder on every call (about 1.3 µs, and a saga's writes encode four or five values): this
# is that C encoder, made once. Without circular checks: it is only given what encode_value
# built, a tree of new containers, or a tree that _plain walked (a circular input fails in
# either walk, RecursionError).
def _make_encoder() -> Any:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python): json.dumps each time
        return None
    try:
        return make(
            None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
            False,
        )  # fmt: skip
    except TypeError:  # a Python whose C encoder takes other arguments
        return None


_ENCODE = _make_encoder()


def plain_json(value: Any) -> str:
    """The compact JSON text of ``value``, plain JSON types only (what
    :func:`encode_value` returns), as ``json.dumps(value, separators=(",", ":"),
    allow_nan=False)`` writes it: ``ValueError`` for a NaN or an infinity."""
    if _ENCODE is None:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    return "".join(_ENCODE(value, 0))


def _plain(value: dict[Any, Any]) -> bool:
    """Whether ``value`` is JSON as it stands, that :func:`encode_value` would copy unchanged:
    ``str`` keys that do not start with ``$``; ``None``, ``str``, ``int``, ``float`` and
    ``bool`` values (exactly those types: a subclass, such as an enum, goes the long way) or
    dicts of the same kind."""
    for key, item in value.items():
        if type(key) is not str or key[:1] == "$":
            return False
        if item is None or type(item) in _SCALARS:
            continue
        if type(item) is not dict or not _plain(item):
            return False
    return True


def dumps(value: Any) -> str:
    """JSON text of ``value`` (see :func:`encode_value`); NaN and infinities are refused,
    because PostgreSQL's JSONB cannot hold them and every store must accept the same data."""
    if type(value) is dict and not value:  # e.g. a pending saga's context: no walk, no encoder
        return "{}"
    try:
        if type(value) is dict and _plain(value):  # most contexts and events: checked, not copied
            return plain_json(value)
        return plain_json(encode_value(value))
    except ValueError as exc:
        raise UnstorableValueError(
            f"cannot store a NaN or infinite float ({exc}); store None or a string instead"
        ) from exc


def loads(text: str | bytes) -> Any:
    """The value :func:`dumps` wrote."""
    return decode_value(json.loads(text))


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if moment.tzinfo is UTC:  # e.g. sagaz.clock.utcnow(), most moments: no conversion
        return moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UnstorableValueError(
            f"naive datetime {moment.isoformat()} given to the store: pass an aware datetime, "
            "e.g. datetime.now(UTC) or sagaz.clock.utcnow()"
        )
    return moment.astimezone(UTC)


def to_text(moment: datetime) -> str:
    """Fixed-width ISO text in UTC (``2024-05-01T12:00:00.000000Z``): sorts like the moment."""
    if moment.tzinfo is UTC:  # e.g. sagaz.clock.utcnow(): already UTC, no conversion
        # its text ends in "+00:00": cut, not a naive copy made first (1.0 against 1.3 µs)
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    return to_utc(moment).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_text(text: str) -> datetime:
    """The aware UTC datetime :func:`to_text` wrote."""
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exact (fits a Redis score up to the year 2255)."""
    delta = to_utc(moment) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int | str | bytes) -> datetime:
    """The aware UTC datetime :func:`to_micros` wrote."""
    return _EPOCH + timedelta(microseconds=int(micros))
