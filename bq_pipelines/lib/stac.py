"""STAC items and collections: built with rio-stac and pystac, validated offline.

Validation reads extension schemas from a local folder when one is configured
(BQ_STAC_SCHEMAS_DIR, laid out `<name>/<version>/schema.json`) and falls back to fetching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac


@dataclass(frozen=True)
class ItemAssetSpec:
    """The COG asset of an item."""

    href: str
    key: str = "data"
    title: str | None = None
    roles: tuple[str, ...] = ("data",)
    media_type: str = "image/tiff; application=geotiff; profile=cloud-optimized"


def multihash_sha256(sha256_hex: str) -> str:
    """`file:checksum` value: multihash (0x12 0x20 prefix) of a sha256 hex digest."""
    raise NotImplementedError


def build_item(cog_path: Path, *, item_id: str, collection_id: str,
               datetime_: datetime | None, asset: ItemAssetSpec,
               properties: Mapping[str, Any] | None = None,
               start_datetime: datetime | None = None, end_datetime: datetime | None = None,
               file_size: int, file_sha256: str) -> pystac.Item:
    """Item for one COG: geometry/bbox in WGS84, projection, raster (with statistics and
    histogram-free band info), file:size and file:checksum on the asset, `properties` merged."""
    raise NotImplementedError


def build_collection(*, collection_id: str, title: str, description: str, license_: str,
                     items: Iterable[pystac.Item | Mapping[str, Any]],
                     providers: Sequence[Mapping[str, Any]] = (),
                     keywords: Sequence[str] = (),
                     summaries: Mapping[str, Any] | None = None,
                     item_assets: Mapping[str, Any] | None = None,
                     extra_fields: Mapping[str, Any] | None = None) -> pystac.Collection:
    """Collection whose spatial/temporal extent is the union of its items' (a global, open
    extent when there are none yet)."""
    raise NotImplementedError


def validate(stac_object: pystac.STACObject | Mapping[str, Any],
             schemas_dir: Path | None = None) -> None:
    """Validate against core + every extension schema used; raise StacValidationError naming
    the object id, the schema and the failing field. Offline when `schemas_dir` is given (or
    BQ_STAC_SCHEMAS_DIR is set)."""
    raise NotImplementedError
