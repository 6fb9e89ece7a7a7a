"""Previews in the Dagster UI: materialization metadata a person looks at rather than reads.

Per partition: a link to its published item and the thumbnail of its (first) item; per
collection: a coverage map of the item footprints and the item count over time. Built from
plain values (items as dicts, PNG bytes) by `lib/preview.py`; the assets add these dicts to
their metadata.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

from bq_pipelines.lib import preview
from bq_pipelines.lib.pipeline import PartitionResult, Services

# Images up to this size are embedded in the metadata (a data: URI the UI renders); larger ones
# are linked, to keep the event log light.
MAX_INLINE_PNG_BYTES = 96 * 1024
BAR_WIDTH = 30


def image_markdown(png: bytes | None, alt: str, href: str | None = None) -> str:
    """Markdown showing a PNG: embedded when small enough, else a link to `href`."""
    if png is not None and len(png) <= MAX_INLINE_PNG_BYTES:
        encoded = base64.b64encode(png).decode("ascii")
        image = f"![{alt}](data:{preview.PNG_MEDIA_TYPE};base64,{encoded})"
        return f"[{image}]({href})" if href and href.startswith("http") else image
    if href:
        return f"[{alt}]({href})"
    return f"_{alt}: none_"


def item_preview_metadata(
    item: Mapping[str, Any], thumbnail_png: bytes | None
) -> dict[str, dg.MetadataValue]:
    """A partition's item thumbnail, when it has one (its `item_url` is the factory's)."""
    metadata: dict[str, dg.MetadataValue] = {}
    asset = (item.get("assets") or {}).get("thumbnail")
    if asset is not None:
        href = str(asset["href"])
        metadata["thumbnail"] = dg.MetadataValue.md(
            image_markdown(thumbnail_png, f"thumbnail of {item.get('id')}", href)
        )
        metadata["thumbnail_href"] = dg.MetadataValue.url(href)
    return metadata


def partition_previews(result: PartitionResult, services: Services) -> dict[str, Any]:
    """`item_preview_metadata` of a partition's first item, its thumbnail read back from the
    object store (what readers get)."""
    first = result.items[0]
    png = services.store.get_bytes(first.thumbnail.key) if first.thumbnail is not None else None
    return item_preview_metadata(first.item, png)


# Items read for a collection's previews: enough for a faithful map of most collections, bounded
# so that a refresh of a very large one (229,050 items) does not page through all of it.
PREVIEW_MAX_ITEMS = 10_000


def items_over_time_markdown(rows: Sequence[tuple[str, int]]) -> str:
    """A markdown table of (period, count) with a bar per row."""
    if not rows:
        return "_no items_"
    most = max(count for _, count in rows) or 1
    lines = ["| period | items | |", "|---|---:|---|"]
    for period, count in rows:
        bar = "█" * max(1 if count else 0, round(BAR_WIDTH * count / most))
        lines.append(f"| {period} | {count:,} | {bar} |")
    return "\n".join(lines)


def collection_previews(
    items: Iterable[Mapping[str, Any]], total: int | None = None
) -> dict[str, dg.MetadataValue]:
    """A collection's coverage map (its items' footprints) and its item count over time.

    `items` may be the first of `total` items (see PREVIEW_MAX_ITEMS): the captions say so."""
    items = list(items)
    sampled = total is not None and total > len(items)
    of_what = f"the first {len(items):,} of {total:,} items" if sampled else f"{len(items):,} items"
    over_time = items_over_time_markdown(preview.items_over_time(items))
    metadata: dict[str, dg.MetadataValue] = {
        "items_over_time": dg.MetadataValue.md(
            over_time + (f"\n\n_Counted over {of_what}._" if sampled else "")
        )
    }
    coverage = preview.coverage_map(items)
    if coverage is not None:
        west, south, east, north = coverage.bounds
        caption = (
            f"{of_what}, {coverage.footprints:,} distinct footprints; longitude "
            f"{west:.2f} to {east:.2f}, latitude {south:.2f} to {north:.2f} (equirectangular, "
            f"graticule lines); darker where more items overlap (at most {coverage.max_overlap})."
        )
        metadata["coverage_map"] = dg.MetadataValue.md(
            image_markdown(coverage.png, "coverage map") + "\n\n" + caption
        )
    return metadata
