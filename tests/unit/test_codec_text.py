"""The stores' JSON text (:func:`sagaz.storage.codec.dumps`): the one ``json.dumps`` writes,
compact, with NaN and infinities refused, from an encoder made once; and moments, kept as the
same instant in UTC."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from typing import Any

import pytest

from sagaz.exceptions import StoreError
from sagaz.storage.codec import dumps, encode_value, loads, plain_json, to_micros, to_text, to_utc


class Colour(StrEnum):
    RED = "red"


class Size(IntEnum):
    BIG = 3


VALUES: list[Any] = [
    None,
    "text",
    'é ☃ \n " \\ \x00',
    0,
    -(2**70),
    1.5,
    -0.0,
    1e300,
    True,
    [],
    {},
    {"id": 1},
    {"nested": {"list": [1, 2.25, None, False, "x", {"deep": []}]}, "b": b"\x00\xff"},
    {"when": datetime(2026, 12, 5, 12, 0, tzinfo=UTC), "$sagaz:key": "escaped"},
    (1, "tuple"),
    {"colour": Colour.RED, "size": Size.BIG},
    # flat and nested plain dicts (encoded as they stand), and ones that only look plain
    {"a": 1, "b": "x", "c": None, "d": 2.5, "e": True, "f": {"g": {"h": -1}}},
    {"$money": 1, "a": {"$sagaz:x": 2}},
    {"a": {"b": [1]}, "c": (2,)},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_the_text_is_json_dumps_compact_text(value: Any) -> None:
    expected = json.dumps(encode_value(value), separators=(",", ":"), allow_nan=False)
    assert dumps(value) == expected
    assert plain_json(encode_value(value)) == expected


@pytest.mark.parametrize("value", VALUES[:13], ids=repr)
def test_the_text_reads_back(value: Any) -> None:
    assert loads(dumps(value)) == value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinities_are_refused_with_the_fix(bad: float) -> None:
    with pytest.raises(StoreError, match="store None or a string instead"):
        dumps({"ratio": [1, bad]})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_infinities_are_refused_in_a_plain_dict_too(bad: float) -> None:
    with pytest.raises(StoreError, match="store None or a string instead"):
        dumps({"ratio": bad})
    with pytest.raises(StoreError, match="store None or a string instead"):
        dumps({"a": {"ratio": bad}})


def test_a_key_that_is_not_a_string_is_refused_in_a_plain_dict_too() -> None:
    with pytest.raises(StoreError, match="must be strings"):
        dumps({1: "one"})
    with pytest.raises(StoreError, match="must be strings"):
        dumps({"a": {None: "none"}})


def test_each_text_is_whole_after_a_refused_value() -> None:
    with pytest.raises(StoreError):
        dumps({"a": {"b": float("nan")}})
    assert dumps({"a": {"b": 1}}) == '{"a":{"b":1}}'


def test_a_value_the_stores_cannot_keep_is_refused() -> None:
    with pytest.raises(StoreError, match="convert it first"):
        dumps({"s": {1, 2}})


def test_a_moment_is_the_same_instant_in_utc_whatever_its_zone() -> None:
    utc = datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=UTC)
    india = utc.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert to_utc(utc) is utc  # already UTC: kept as it is
    assert to_utc(india) == utc and to_utc(india).tzinfo is UTC
    assert to_micros(india) == to_micros(utc) == 1_796_472_000_123_456
    assert to_text(india) == to_text(utc) == "2026-12-05T12:00:00.123456Z"
    with pytest.raises(StoreError, match="naive datetime"):
        to_utc(utc.replace(tzinfo=None))
