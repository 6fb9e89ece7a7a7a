"""The STAC extensions items and collections declare: their schema URLs, pinned to what the
offline schema folder holds, and the `file:checksum` value."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Versions pinned to what the offline schema folder holds. Projection v1.2.0: the legacy catalog's
# items carry `proj:epsg`, which clients read; v1.2.0 has it beside `proj:code` ("EPSG:4326"),
# while v2.0.0 forbids it. Raster stays at v1.1.0: v2.0.0 drops raster:bands.
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v1.2.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
# Category names of classified rasters. v1.1.0: v2.0.0 requires a `name` matching
# ^[0-9A-Za-z-_]+$ in every class, which free-text GDAL category names do not guarantee.
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
ITEM_ASSETS_SCHEMA = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"

# Field prefix -> extension schema, to declare the extensions a collection's fields use.
_PREFIX_SCHEMAS = {
    "proj": PROJECTION_SCHEMA,
    "raster": RASTER_SCHEMA,
    "file": FILE_SCHEMA,
    "eo": EO_SCHEMA,
    "classification": CLASSIFICATION_SCHEMA,
}


def extensions_for(fields: Iterable[str]) -> list[str]:
    """The extension schemas the fields (`proj:code`, `raster:bands`...) belong to."""
    prefixes = {key.split(":", 1)[0] for key in fields if ":" in key}
    return [schema for prefix, schema in _PREFIX_SCHEMAS.items() if prefix in prefixes]


def multihash_sha256(sha256_hex: str) -> str:
    """`file:checksum` value: multihash (0x12 0x20 prefix) of a sha256 hex digest."""
    digest = sha256_hex.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a sha256 hex digest (64 hex digits): {sha256_hex!r}")
    return "1220" + digest
