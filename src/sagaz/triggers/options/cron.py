"""``CronOptions``: the options of ``@trigger(source="cron", ...)``.

The expression and the time zone are checked here, when the class is defined (croniter and
zoneinfo are core dependencies); :class:`~sagaz.sources.cron.CronSchedule` computes the ticks.

>>> CronOptions(schedule="*/5 * * * *", timezone="Europe/Berlin").catchup
'none'
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import Field, field_validator

from sagaz.triggers.options.base import PositiveInt, SourceOptions

__all__ = ["CatchupPolicy", "CronOptions", "check_expression", "zone"]

CatchupPolicy = Literal["none", "latest", "all"]

_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_SCHEDULE_HINT = (
    'use 5 fields "minute hour day-of-month month day-of-week" (e.g. "*/5 * * * *"), '
    '6 fields with the seconds last (croniter\'s convention, e.g. "0 * * * * 30"), '
    "or one of " + ", ".join(sorted(_ALIASES))
)


def check_expression(expression: str) -> str:
    """The expression, stripped, once croniter accepts it (``ValueError`` naming the option)."""
    expr = expression.strip()
    if expr.startswith("@"):
        if expr.lower() not in _ALIASES:
            raise ValueError(
                f"option schedule={expression!r} is not a known shortcut; {_SCHEDULE_HINT}"
            )
    elif len(expr.split()) not in (5, 6):
        raise ValueError(
            f"option schedule={expression!r} has {len(expr.split())} fields; {_SCHEDULE_HINT}"
        )
    try:
        # one real step also rejects dates that never come (e.g. "0 0 30 2 *")
        croniter(expr, datetime(2026, 1, 1)).get_next(datetime)
    except (ValueError, TypeError, KeyError) as exc:  # croniter's errors are ValueErrors
        raise ValueError(
            f"option schedule={expression!r} is not a valid cron expression ({exc}); "
            f"{_SCHEDULE_HINT}"
        ) from exc
    return expr


def zone(name: object) -> ZoneInfo:
    """The time zone called ``name`` (``ValueError`` naming the option otherwise)."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f'option timezone={name!r} must be an IANA time zone name such as "UTC" or '
            '"Europe/Berlin"'
        )
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(
            f"option timezone={name!r} is not a known IANA time zone; use a name such as "
            '"UTC" or "Europe/Berlin" (see zoneinfo.available_timezones())'
        ) from exc


class CronOptions(SourceOptions):
    """A cron schedule in a time zone; each tick fires once across all instances."""

    schedule: str = Field(
        description='Cron expression: 5 fields ("*/5 * * * *"), 6 with the seconds last '
        '("0 * * * * 30"), or a shortcut (@yearly, @monthly, @weekly, @daily, @hourly...).',
        examples=["*/5 * * * *"],
    )
    timezone: str = Field(
        default="UTC",
        description='IANA time zone the expression is read in, e.g. "Europe/Berlin".',
    )
    catchup: CatchupPolicy = Field(
        default="none",
        description='Ticks missed while no instance ran: "none" fires none, "latest" the most '
        'recent one, "all" each of them oldest first (at most max_catchup).',
    )
    max_catchup: PositiveInt = Field(
        default=100,
        description='Most missed ticks catchup="all" fires (the oldest beyond it are dropped).',
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _expression(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"option schedule={value!r} must be a cron expression string; {_SCHEDULE_HINT}"
            )
        return check_expression(value)

    @field_validator("timezone", mode="before")
    @classmethod
    def _timezone(cls, value: Any) -> str:
        zone(value)
        return str(value)
