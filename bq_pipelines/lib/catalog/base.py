"""What every catalog backend shares: the `Publisher` interface, the JSON form of STAC objects,
and the comparison that tells an unchanged document from a changed one."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pystac

from bq_pipelines.lib import stac

logger = logging.getLogger(__name__)

PublishOutcome = Literal["created", "updated", "unchanged", "upserted"]

# Links a publisher owns: rewritten on every write, never copied from the object given.
STRUCTURAL_RELS = frozenset({"self", "root", "parent", "child", "item", "collection", "items"})


@dataclass(frozen=True)
class CollectionContent:
    """What a collection's extent and summaries say of its items: how many, where and when,
    and the distinct values of the summarized properties."""

    items: int
    extent: pystac.Extent
    summaries: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> CollectionContent:
        return cls(items=0, extent=stac.union_extent([]))


class Publisher(ABC):
    @abstractmethod
    def upsert_collection(self, collection: pystac.Collection) -> PublishOutcome: ...

    @abstractmethod
    def ensure_collection(self, collection: pystac.Collection) -> PublishOutcome:
        """Create the collection if missing; leave an existing one untouched."""

    @abstractmethod
    def upsert_item(self, item: pystac.Item) -> PublishOutcome: ...

    def upsert_items(self, items: Sequence[pystac.Item]) -> list[PublishOutcome]:
        """Publish many items of one collection; outcomes in order ("upserted" when the
        backend does not tell which were new)."""
        return [self.upsert_item(item) for item in items]

    @abstractmethod
    def get_collection(self, collection_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def item_url(self, collection_id: str, item_id: str) -> str:
        """Where a reader finds the item (a file:// URL for a static catalog)."""

    @abstractmethod
    def iter_items(self, collection_id: str) -> Iterator[dict[str, Any]]:
        """Every item of a collection, as dicts (paged for STAC APIs)."""

    def get_items(
        self, collection_id: str, item_ids: Sequence[str], *, whole: bool = False
    ) -> dict[str, dict[str, Any]]:
        """The items of `item_ids` the catalog holds, by id (at least `id` and `assets`; every
        field with `whole`)."""
        found = {i: self.get_item(collection_id, i) for i in item_ids}
        return {i: item for i, item in found.items() if item is not None}

    def missing_item_ids(self, collection_id: str, item_ids: Sequence[str]) -> list[str]:
        """Which of `item_ids` the catalog does not hold."""
        found = self.get_items(collection_id, item_ids)
        return [i for i in item_ids if i not in found]

    @abstractmethod
    def delete_item(self, collection_id: str, item_id: str) -> None: ...

    def collection_content(
        self, collection_id: str, summarize: Sequence[str] = ()
    ) -> CollectionContent:
        """Count, extent and summaries (of the properties `summarize`) of the collection's
        items. Here by reading every item (static catalog, STAC API); a database backend
        aggregates where the items are."""
        count = 0
        values: dict[str, list[Any]] = {name: [] for name in summarize}
        times_and_boxes: list[dict[str, Any]] = []
        for item in self.iter_items(collection_id):
            count += 1
            properties = item.get("properties", {})
            for name in summarize:
                if name in properties:
                    values[name].append(properties[name])
            # Only what the extent reads: 229,050 whole items would not fit comfortably.
            times_and_boxes.append({"bbox": item.get("bbox"), "properties": properties})
        if count == 0:
            return CollectionContent.empty()
        return CollectionContent(
            items=count,
            extent=stac.union_extent(times_and_boxes),
            summaries=stac.summarize_values(values),
        )


def to_json_dict(stac_object: pystac.STACObject) -> dict[str, Any]:
    # The JSON round trip makes tuples lists, so comparisons see what a reader of the file sees.
    raw = stac_object.to_dict(include_self_link=False, transform_hrefs=False)
    document: dict[str, Any] = json.loads(json.dumps(raw))
    return document


def foreign_links(links: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(link) for link in links if link.get("rel") not in STRUCTURAL_RELS]


def _without_nulls(value: Any) -> Any:
    # pgstac strips null-valued fields (e.g. proj:code of a CRS without EPSG code) on ingest.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    """What the publisher controls: the server rewrites links and drops nulls."""
    kept: dict[str, Any] = _without_nulls({k: v for k, v in document.items() if k != "links"})
    return kept


def same_content(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether a stored document equals ours, ignoring fields the server adds or rewrites:
    links, null-valued fields, and top-level keys we did not send."""
    mine, stored = _comparable(ours), _comparable(theirs)
    return all(stored.get(key) == value for key, value in mine.items())
