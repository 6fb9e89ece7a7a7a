"""A collection's item count over time, by month, year or decade."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any


def item_start(item: Mapping[str, Any]) -> datetime | None:
    properties = item.get("properties") or {}
    text = properties.get("datetime") or properties.get("start_datetime")
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def items_over_time(
    items: Iterable[Mapping[str, Any]], max_rows: int = 60
) -> list[tuple[str, int]]:
    """(period, item count) by month, year or decade, whichever keeps at most `max_rows`
    periods between the first and the last; periods without items are listed (with 0) so
    that gaps show. Items without a date are counted under "undated"."""
    dates = []
    undated = 0
    for item in items:
        when = item_start(item)
        if when is None:
            undated += 1
        else:
            dates.append(when)
    rows: list[tuple[str, int]] = []
    if dates:
        first, last = min(dates), max(dates)
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        if months <= max_rows:
            counts = Counter(d.strftime("%Y-%m") for d in dates)
            periods = [
                f"{first.year + (first.month - 1 + m) // 12}-{(first.month - 1 + m) % 12 + 1:02d}"
                for m in range(months)
            ]
        else:
            size = 1 if last.year - first.year < max_rows else 10
            counts = Counter(_year_period(d.year, size) for d in dates)
            periods = [
                _year_period(year, size)
                for year in range(first.year - first.year % size, last.year + 1, size)
            ]
        rows = [(period, counts.get(period, 0)) for period in periods]
    if undated:
        rows.append(("undated", undated))
    return rows


def _year_period(year: int, size: int) -> str:
    return str(year) if size == 1 else f"{year - year % size}s"
