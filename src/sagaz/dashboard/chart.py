"""The last hour's completed and failed sagas per minute, as a small server-rendered SVG."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from markupsafe import Markup

__all__ = ["per_minute_svg"]

_WIDTH, _HEIGHT, _MINUTES = 600, 120, 60


def _buckets(now: datetime, moments: Iterable[datetime | None]) -> list[int]:
    counts = [0] * _MINUTES
    for moment in moments:
        if moment is None:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=now.tzinfo)
        ago = int((now - moment).total_seconds() // 60)
        if 0 <= ago < _MINUTES:
            counts[_MINUTES - 1 - ago] += 1
    return counts


def per_minute_svg(
    now: datetime, completed: Iterable[datetime | None], failed: Iterable[datetime | None]
) -> Markup:
    """Two bar series (completed green, failed red) over the last 60 minutes; only numbers
    go into the markup."""
    done, bad = _buckets(now, completed), _buckets(now, failed)
    top = max([*done, *bad, 1])
    bar = _WIDTH / _MINUTES / 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT + 20}" '
        f'role="img" aria-label="completed and failed sagas per minute, last hour" id="chart">'
    ]
    for minute, (ok, ko) in enumerate(zip(done, bad, strict=True)):
        x = minute * bar * 2
        for offset, count, colour, kind in (
            (0, ok, "#2a7", "completed"),
            (bar, ko, "#c33", "failed"),
        ):
            if count:
                h = count / top * _HEIGHT
                parts.append(
                    f'<rect class="{kind}" x="{x + offset:.1f}" y="{_HEIGHT - h:.1f}" '
                    f'width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                    f"<title>{count} {kind}, {_MINUTES - 1 - minute} min ago</title></rect>"
                )
    parts.append(
        f'<text x="0" y="{_HEIGHT + 15}" font-size="11">-60 min</text>'
        f'<text x="{_WIDTH - 30}" y="{_HEIGHT + 15}" font-size="11">now</text>'
        f'<text x="{_WIDTH / 2 - 60}" y="{_HEIGHT + 15}" font-size="11">'
        f"{sum(done)} completed, {sum(bad)} failed</text></svg>"
    )
    return Markup("".join(parts))
