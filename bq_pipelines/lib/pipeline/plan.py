"""What an item is made from (`ItemPlan`: its sources and settings), the STAC fields it states
before any data is read, and the fingerprint that tells when what a partition produces would
change."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime as DateTime  # the type, where a field is named `datetime`
from typing import Any, TypedDict

from bq_pipelines.lib import cog, preview, stac
from bq_pipelines.lib.hashing import sha256_json

# Bump when the pipeline changes what a partition produces: it invalidates skip-unchanged.
# 2: the COG asset keyed by the item id, proj:epsg beside proj:code, spatial_resolution.
PIPELINE_VERSION = "2"


@dataclass(frozen=True)
class SourceRef:
    """One input file of an item, and what to read from it."""

    url: str
    subdataset: str | None = None
    bands: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ItemPlan:
    """Everything needed to produce and publish one item: the unit of work."""

    collection_id: str
    item_id: str
    folder: str
    file_name: str
    sources: tuple[SourceRef, ...]
    cog: cog.CogSettings
    datetime: DateTime | None = None
    start_datetime: DateTime | None = None
    end_datetime: DateTime | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    title: str | None = None
    # A PNG thumbnail stored beside the COG (`preview.thumbnail_file_name`) and added to the
    # item as its `thumbnail` asset.
    thumbnail: bool = False
    # Who writes the item when not a dataset's partition (`storage.API_WRITER`): recorded with
    # the object's owner, so that the audit knows whose item it is.
    writer: str = ""

    def fingerprint_payload(self) -> dict[str, Any]:
        payload = {
            "collection": self.collection_id,
            "item": self.item_id,
            "folder": self.folder,
            "file": self.file_name,
            "cog": self.cog.fingerprint(),
            "sources": [[s.url, s.subdataset, list(s.bands or ())] for s in self.sources],
            "datetime": [str(self.datetime), str(self.start_datetime), str(self.end_datetime)],
            "properties": dict(self.properties),
            "title": self.title,
        }
        if self.thumbnail:  # only then: items without thumbnails keep their fingerprints
            payload["thumbnail"] = preview.PREVIEW_VERSION
        return payload


class ItemFields(TypedDict):
    """The keyword arguments `stac.build_item` and `stac.planned_item` share."""

    item_id: str
    collection_id: str
    datetime_: DateTime | None
    start_datetime: DateTime | None
    end_datetime: DateTime | None
    properties: Mapping[str, Any]
    asset: stac.ItemAssetSpec


def item_fields(plan: ItemPlan, href: str) -> ItemFields:
    """What the plan says of its item, its COG asset at `href`: the same whether the item is
    built from the COG or planned before it exists, so that what is compared is what is built."""
    return ItemFields(
        item_id=plan.item_id,
        collection_id=plan.collection_id,
        datetime_=plan.datetime,
        start_datetime=plan.start_datetime,
        end_datetime=plan.end_datetime,
        properties=plan.properties,
        asset=stac.ItemAssetSpec(href=href, key=plan.item_id, title=plan.title or plan.file_name),
    )


def fingerprint(plans: Sequence[ItemPlan], source_tokens: Sequence[str]) -> str:
    """Changes whenever a source, a setting or the code that turns them into items changes."""
    payload = {
        "pipeline": PIPELINE_VERSION,
        "cog": cog.COG_ALGORITHM_VERSION,
        "sources": sorted(source_tokens),
        "items": [p.fingerprint_payload() for p in plans],
    }
    return sha256_json(payload)


def settings_digest(plans: Sequence[ItemPlan]) -> str:
    """What the fingerprint holds but the sources: the items planned, their settings and the
    code. Recorded beside it, it tells a partition whose settings changed without asking any
    source host."""
    return fingerprint(plans, [])
