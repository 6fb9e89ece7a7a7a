"""Previews in the Dagster UI: materialization metadata a person looks at rather than reads.

Per partition: a link to its published item, the thumbnail of its (first) item and, with a tile
server, its map (`map_url`); per collection: a coverage map of the item footprints (stored in the
object store beside the datasets, `_previews/<collection>/coverage-map.png`), the item count over
time and, with a tile server, a mosaic (`map_url`). Built from plain values (items as dicts, PNG
bytes) by `lib/preview/`; the assets add these dicts to their metadata.

Dagster's UI shows a markdown value in place when it is shorter than 1,000 characters, and
behind "[Show Markdown]" otherwise: an image given by its http URL (the store's public URL, or
the browse server's on the embedded defaults) is shown in place; without one it is embedded as
a data: URI, which only fits behind the button.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.lib import preview
from bq_pipelines.lib.hashing import sha256_bytes
from bq_pipelines.lib.links import Links
from bq_pipelines.lib.pipeline import PartitionResult, Services
from bq_pipelines.lib.storage import ObjectStore

# Images up to this size are embedded in the metadata (a data: URI the UI renders); larger ones
# are linked, to keep the event log light.
MAX_INLINE_PNG_BYTES = 96 * 1024
BAR_WIDTH = 30
PREVIEWS_FOLDER = "_previews"


def image_markdown(png: bytes | None, alt: str, href: str | None = None) -> str:
    """Markdown showing a PNG: by its http `href` (short: shown in place by the UI), else
    embedded when small enough, else a link to `href`."""
    if href and href.startswith(("http://", "https://")):
        return f"[![{alt}]({href})]({href})"
    if png is not None and len(png) <= MAX_INLINE_PNG_BYTES:
        encoded = base64.b64encode(png).decode("ascii")
        return f"![{alt}](data:{preview.PNG_MEDIA_TYPE};base64,{encoded})"
    if href:
        return f"[{alt}]({href})"
    return f"_{alt}: none_"


def item_preview_metadata(
    item: Mapping[str, Any], thumbnail_png: bytes | None, links: Links | None = None
) -> dict[str, dg.MetadataValue]:
    """A partition's item thumbnail, when it has one, and its map on the tile server, when one
    is configured (its `item_url` is the factory's)."""
    links = links or Links()
    metadata: dict[str, dg.MetadataValue] = {}
    asset = (item.get("assets") or {}).get("thumbnail")
    if asset is not None:
        href = links.browsable(str(asset["href"]))
        metadata["thumbnail"] = dg.MetadataValue.md(
            image_markdown(thumbnail_png, f"thumbnail of {item.get('id')}", href)
        )
        metadata["thumbnail_href"] = dg.MetadataValue.url(href)
    map_url = links.item_map(item)
    if map_url is not None:
        metadata["map_url"] = dg.MetadataValue.url(map_url)
    return metadata


def partition_previews(result: PartitionResult, services: Services) -> dict[str, Any]:
    """`item_preview_metadata` of a partition's first item, its thumbnail read back from the
    object store (what readers get)."""
    first = result.items[0]
    png = services.store.get_bytes(first.thumbnail.key) if first.thumbnail is not None else None
    return item_preview_metadata(first.item, png, services.links)


def coverage_map_key(object_prefix: str, collection_id: str) -> str:
    """Where a collection's coverage map is stored: outside every dataset's folder (the drift
    audit looks for orphans there), public like the COGs."""
    return f"{object_prefix}/{PREVIEWS_FOLDER}/{collection_id}/coverage-map.png"


def store_coverage_map(png: bytes, store: ObjectStore, key: str, staging: Path) -> str:
    """The map stored under `key` (nothing uploaded when the same bytes are there: rendering is
    deterministic); its href."""
    path = staging / "coverage-map.png"
    path.write_bytes(png)
    return store.put_file(
        path, key, sha256=sha256_bytes(png), content_type=preview.PNG_MEDIA_TYPE
    ).href


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
    items: Iterable[Mapping[str, Any]],
    total: int | None = None,
    *,
    store_map: Callable[[bytes], str] | None = None,
    links: Links | None = None,
    collection_id: str | None = None,
) -> dict[str, dg.MetadataValue]:
    """A collection's coverage map (its items' footprints over land), its item count over time
    and, with a tile server and a `collection_id`, a mosaic of it (`map_url`).

    `items` may be the first of `total` items (see PREVIEW_MAX_ITEMS): the captions say so.
    `store_map` stores the map's PNG and returns its href: shown by URL when that is http."""
    links = links or Links()
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
            f"land from Natural Earth, graticule lines); darker where more items overlap (at "
            f"most {coverage.max_overlap})."
        )
        href = links.browsable(store_map(coverage.png)) if store_map is not None else None
        metadata["coverage_map"] = dg.MetadataValue.md(
            image_markdown(coverage.png, "coverage map", href) + "\n\n" + caption
        )
        if href is not None:
            metadata["coverage_map_href"] = dg.MetadataValue.url(href)
    map_url = links.collection_map(collection_id, items[0]) if collection_id and items else None
    if map_url is not None:
        metadata["map_url"] = dg.MetadataValue.url(map_url)
    return metadata
