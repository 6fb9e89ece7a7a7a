"""Counts in words for what people read (CLI lines, log lines): "1 partition", "2 partitions"."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`count` and `noun`, the noun in the plural unless the count is exactly one (`many` for an
    irregular plural; "orphan object" -> "orphan objects", "entry" -> "entries")."""
    if count == 1:
        return f"{count:,} {noun}"
    if many is None:
        many = (
            noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
        )
    return f"{count:,} {many}"
