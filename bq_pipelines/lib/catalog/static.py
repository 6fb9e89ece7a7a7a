"""A self-contained static catalog on disk (the embedded default)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pystac

from bq_pipelines.lib import names
from bq_pipelines.lib.catalog.base import Publisher, PublishOutcome, foreign_links, to_json_dict
from bq_pipelines.lib.errors import CatalogError
from bq_pipelines.lib.files import exclusive_lock, write_text_atomically

logger = logging.getLogger(__name__)


def _check_path_id(kind: str, value: str) -> str:
    # Ids become folder names: refuse anything that could climb out of the catalog root.
    problem = names.id_problem(value)
    if problem is not None:
        raise CatalogError(
            f"{kind} id {value!r} cannot name a folder of the static catalog: {problem}"
        )
    return value


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return document


def _write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Write through a temporary file and rename, so readers never see half a document."""
    write_text_atomically(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


class StaticCatalogPublisher(Publisher):
    """A self-contained static catalog (relative links, no self links) under `root`:
    `catalog.json`, `<collection>/collection.json`, `<collection>/<item>/<item>.json`.

    Several processes may publish at once: every read-modify-write of catalog.json or a
    collection.json happens under an exclusive flock on `root/.catalog.lock`. Item files are
    written atomically. Asset hrefs are kept as given (absolute object-store URLs).
    """

    def __init__(
        self,
        root: Path,
        catalog_id: str = "bq-io",
        title: str = "Biodiversité Québec IO",
        description: str = "Raster datasets of Biodiversité Québec, as Cloud-Optimized GeoTIFFs",
    ) -> None:
        self.root = Path(root)
        self.catalog_id = catalog_id
        self.title = title
        self.description = description

    # paths ------------------------------------------------------------------------

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.json"

    def collection_path(self, collection_id: str) -> Path:
        return self.root / _check_path_id("collection", collection_id) / "collection.json"

    def item_path(self, collection_id: str, item_id: str) -> Path:
        folder = self.root / _check_path_id("collection", collection_id)
        item_id = _check_path_id("item", item_id)
        return folder / item_id / f"{item_id}.json"

    def write_lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock every write takes: a reader that needs the whole catalog consistent at
        one moment (a backup) holds it too."""
        return self._locked()

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self.root / ".catalog.lock")

    # catalog and collections ---------------------------------------------------------

    def _catalog_document(self) -> dict[str, Any]:
        existing = _read_json(self.catalog_path)
        if existing is not None:
            return existing
        catalog = pystac.Catalog(id=self.catalog_id, description=self.description, title=self.title)
        document = to_json_dict(catalog)
        document["links"] = [
            {
                "rel": "root",
                "href": "./catalog.json",
                "type": pystac.MediaType.JSON,
                "title": self.title,
            }
        ]
        return document

    def _add_child_link(self, collection_id: str, title: str | None) -> None:
        """Link the catalog to a collection (called under the lock)."""
        catalog = self._catalog_document()
        href = f"./{collection_id}/collection.json"
        if any(link.get("href") == href for link in catalog["links"]):
            return
        link = {"rel": "child", "href": href, "type": pystac.MediaType.JSON}
        if title:
            link["title"] = title
        catalog["links"].append(link)
        _write_json_atomic(self.catalog_path, catalog)

    @staticmethod
    def _collection_links(item_links: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"rel": "root", "href": "../catalog.json", "type": pystac.MediaType.JSON},
            {"rel": "parent", "href": "../catalog.json", "type": pystac.MediaType.JSON},
            *item_links,
        ]

    def _write_collection(
        self, collection: pystac.Collection, *, replace_existing: bool
    ) -> PublishOutcome:
        path = self.collection_path(collection.id)
        with self._locked():
            existing = _read_json(path)
            if existing is not None and not replace_existing:
                outcome: PublishOutcome = "unchanged"
            else:
                item_links = [
                    link for link in (existing or {}).get("links", []) if link["rel"] == "item"
                ]
                document = to_json_dict(collection)
                document["links"] = [
                    *self._collection_links(item_links),
                    *foreign_links(document["links"]),
                ]
                if existing == document:
                    outcome = "unchanged"
                else:
                    _write_json_atomic(path, document)
                    outcome = "created" if existing is None else "updated"
            self._add_child_link(collection.id, collection.title)
        logger.info("static catalog: collection %s %s", collection.id, outcome)
        return outcome

    def upsert_collection(self, collection: pystac.Collection) -> PublishOutcome:
        return self._write_collection(collection, replace_existing=True)

    def ensure_collection(self, collection: pystac.Collection) -> PublishOutcome:
        return self._write_collection(collection, replace_existing=False)

    def get_collection(self, collection_id: str) -> dict[str, Any] | None:
        return _read_json(self.collection_path(collection_id))

    # items -----------------------------------------------------------------------

    def _item_document(self, item: pystac.Item, collection_id: str) -> dict[str, Any]:
        document = to_json_dict(item)
        document["links"] = [
            {"rel": "root", "href": "../../catalog.json", "type": pystac.MediaType.JSON},
            {"rel": "parent", "href": "../collection.json", "type": pystac.MediaType.JSON},
            {"rel": "collection", "href": "../collection.json", "type": pystac.MediaType.JSON},
            *foreign_links(document["links"]),
        ]
        document["collection"] = collection_id
        return document

    def _set_item_link(self, collection_id: str, item_id: str, present: bool) -> None:
        """Add or remove the collection's link to an item (called under the lock)."""
        path = self.collection_path(collection_id)
        collection = _read_json(path)
        if collection is None:
            raise CatalogError(
                f"static catalog {self.root}: collection {collection_id!r} does not exist; "
                "publish it (ensure_collection) before its items"
            )
        href = f"./{item_id}/{item_id}.json"
        links = collection["links"]
        has_link = any(link["rel"] == "item" and link["href"] == href for link in links)
        if has_link == present:
            return  # nothing to rewrite: keeps re-publishing cheap for big collections
        if present:
            links.append({"rel": "item", "href": href, "type": pystac.MediaType.GEOJSON})
        else:
            collection["links"] = [link for link in links if link.get("href") != href]
        _write_json_atomic(path, collection)

    def upsert_item(self, item: pystac.Item) -> PublishOutcome:
        collection_id = item.collection_id
        if not collection_id:
            raise CatalogError(f"item {item.id!r} has no collection id; set item.collection_id")
        path = self.item_path(collection_id, item.id)
        document = self._item_document(item, collection_id)
        with self._locked():
            self._set_item_link(collection_id, item.id, present=True)
            existing = _read_json(path)
            if existing == document:
                outcome: PublishOutcome = "unchanged"
            else:
                _write_json_atomic(path, document)
                outcome = "created" if existing is None else "updated"
        logger.debug("static catalog: item %s/%s %s", collection_id, item.id, outcome)
        return outcome

    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any] | None:
        return _read_json(self.item_path(collection_id, item_id))

    def item_url(self, collection_id: str, item_id: str) -> str:
        return self.item_path(collection_id, item_id).absolute().as_uri()

    def iter_items(self, collection_id: str) -> Iterator[dict[str, Any]]:
        collection = self.get_collection(collection_id)
        if collection is None:
            return
        folder = self.collection_path(collection_id).parent
        for link in collection["links"]:
            if link["rel"] != "item":
                continue
            item = _read_json(folder / link["href"])
            if item is not None:  # a concurrent delete may have removed it since
                yield item

    def delete_item(self, collection_id: str, item_id: str) -> None:
        path = self.item_path(collection_id, item_id)
        with self._locked():
            if self.collection_path(collection_id).exists():
                self._set_item_link(collection_id, item_id, present=False)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):  # not empty: something else lives there
                path.parent.rmdir()
