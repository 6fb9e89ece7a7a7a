"""Publishing STAC: a self-contained static catalog on disk (default) or a STAC API with
the Transactions extension. Both are idempotent: publishing the same item twice is one item."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import pystac

from bq_pipelines.lib import names
from bq_pipelines.lib.errors import CatalogError
from bq_pipelines.lib.files import write_text_atomically
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import Outage, RetryPolicy, with_retries

logger = logging.getLogger(__name__)

BULK_THRESHOLD = 20
# A request that hangs is abandoned after 30 s of silence (5 s to connect); each call is retried
# until 120 s have passed, so an outage of a minute is ridden out and a hung API costs a
# partition about two minutes, then a single attempt per call while it stays down (`Outage`).
API_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
API_RETRY = RetryPolicy(
    attempts=50, backoff_seconds=1.0, max_backoff_seconds=15.0, budget_seconds=120.0
)
PublishOutcome = Literal["created", "updated", "unchanged", "upserted"]

# Links a publisher owns: rewritten on every write, never copied from the object given.
_STRUCTURAL_RELS = frozenset({"self", "root", "parent", "child", "item", "collection", "items"})


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

    def get_items(self, collection_id: str, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The items of `item_ids` the catalog holds, by id (at least `id` and `assets`)."""
        found = {i: self.get_item(collection_id, i) for i in item_ids}
        return {i: item for i, item in found.items() if item is not None}

    def missing_item_ids(self, collection_id: str, item_ids: Sequence[str]) -> list[str]:
        """Which of `item_ids` the catalog does not hold."""
        found = self.get_items(collection_id, item_ids)
        return [i for i in item_ids if i not in found]

    @abstractmethod
    def delete_item(self, collection_id: str, item_id: str) -> None: ...


def _to_json_dict(stac_object: pystac.STACObject) -> dict[str, Any]:
    # The JSON round trip makes tuples lists, so comparisons see what a reader of the file sees.
    raw = stac_object.to_dict(include_self_link=False, transform_hrefs=False)
    return json.loads(json.dumps(raw))


def _foreign_links(links: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(link) for link in links if link.get("rel") not in _STRUCTURAL_RELS]


# ------------------------------------------------------------------- static catalog


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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".catalog.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # catalog and collections ---------------------------------------------------------

    def _catalog_document(self) -> dict[str, Any]:
        existing = _read_json(self.catalog_path)
        if existing is not None:
            return existing
        catalog = pystac.Catalog(id=self.catalog_id, description=self.description, title=self.title)
        document = _to_json_dict(catalog)
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
                document = _to_json_dict(collection)
                document["links"] = [
                    *self._collection_links(item_links),
                    *_foreign_links(document["links"]),
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
        document = _to_json_dict(item)
        document["links"] = [
            {"rel": "root", "href": "../../catalog.json", "type": pystac.MediaType.JSON},
            {"rel": "parent", "href": "../collection.json", "type": pystac.MediaType.JSON},
            {"rel": "collection", "href": "../collection.json", "type": pystac.MediaType.JSON},
            *_foreign_links(document["links"]),
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


# ----------------------------------------------------------------------- STAC API


class _ServerError(Exception):
    """A 5xx or 429 answer: worth retrying."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        super().__init__(f"HTTP {response.status_code} from {redact_url(response.request.url)}")


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, (httpx.TransportError, _ServerError))


def _body_excerpt(response: httpx.Response, limit: int = 500) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _without_nulls(value: Any) -> Any:
    # pgstac strips null-valued fields (e.g. proj:code of a CRS without EPSG code) on ingest.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    """What the publisher controls: the server rewrites links and drops nulls."""
    return _without_nulls({k: v for k, v in document.items() if k != "links"})


def same_content(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether a stored document equals ours, ignoring fields the server adds or rewrites:
    links, null-valued fields, and top-level keys we did not send."""
    mine, stored = _comparable(ours), _comparable(theirs)
    return all(stored.get(key) == value for key, value in mine.items())


class StacApiPublisher(Publisher):
    """A STAC API with the Transactions extension (stac-fastapi-pgstac).

    Upserts GET first and skip unchanged content, so re-publishing is cheap and idempotent;
    connection errors, timeouts, 429 and 5xx are retried within the retry policy's time budget
    (`API_RETRY`, `API_TIMEOUT`); other 4xx raise CatalogError with the server's message.
    Headers (credentials) never appear in errors or logs.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = API_TIMEOUT,
        page_size: int = 500,
    ) -> None:
        # Userinfo in the URL travels as basic auth, never in a request URL: httpx logs those.
        url = httpx.URL(base_url.rstrip("/"))
        auth = httpx.BasicAuth(url.username, url.password) if url.username else None
        self.base_url = redact_url(url)
        self._shown_url = self.base_url  # for messages
        self.retry = retry or API_RETRY
        self.outage = Outage()
        self.page_size = page_size
        self._client = httpx.Client(
            base_url=self.base_url + "/", headers=dict(headers or {}), timeout=timeout, auth=auth
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> StacApiPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # HTTP ------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """One request with retries; returns any non-5xx answer for the caller to judge."""

        def attempt() -> httpx.Response:
            response = self._client.request(method, url, **kwargs)
            if response.status_code >= 500 or response.status_code == 429:
                raise _ServerError(response)
            return response

        try:
            return with_retries(
                attempt,
                policy=self.retry,
                is_transient=_is_transient,
                describe=f"{method} {what}",
                outage=self.outage,
            )
        except _ServerError as error:
            raise CatalogError(
                f"STAC API {self._shown_url} failed on {what}: {method} -> "
                f"HTTP {error.response.status_code}: {_body_excerpt(error.response)}"
            ) from error
        except httpx.TransportError as error:
            raise CatalogError(
                f"STAC API {self._shown_url} unreachable on {what} ({method}): "
                f"{type(error).__name__}: {error}"
            ) from error

    def _refused(self, response: httpx.Response, what: str) -> CatalogError:
        return CatalogError(
            f"STAC API refused {what}: {response.request.method} "
            f"{redact_url(response.request.url)} -> HTTP {response.status_code}: "
            f"{_body_excerpt(response)}"
        )

    def _get_json(self, url: str, what: str) -> dict[str, Any] | None:
        response = self._send("GET", url, what=what)
        if response.status_code == 404:
            return None
        if response.is_error:
            raise self._refused(response, what)
        return response.json()

    def _create_or_replace(
        self,
        create_url: str,
        replace_url: str,
        document: dict[str, Any],
        what: str,
        exists: bool,
    ) -> PublishOutcome:
        """POST when missing, PUT when present; the other one when a concurrent writer won."""
        attempts = [("PUT", replace_url), ("POST", create_url)]
        if not exists:
            attempts.reverse()
        for method, url in attempts:
            response = self._send(method, url, what=what, json=document)
            race_lost = (method == "POST" and response.status_code == 409) or (
                method == "PUT" and response.status_code == 404
            )
            if race_lost:
                continue
            if response.is_error:
                raise self._refused(response, what)
            return "created" if method == "POST" else "updated"
        raise CatalogError(f"STAC API {self._shown_url}: {what} neither created nor replaced")

    # collections -----------------------------------------------------------------

    def get_collection(self, collection_id: str) -> dict[str, Any] | None:
        return self._get_json(f"collections/{collection_id}", f"collection {collection_id!r}")

    def _publish_collection(
        self, collection: pystac.Collection, *, replace_existing: bool
    ) -> PublishOutcome:
        what = f"collection {collection.id!r}"
        document = _to_json_dict(collection)
        existing = self.get_collection(collection.id)
        if existing is not None and (not replace_existing or same_content(document, existing)):
            outcome: PublishOutcome = "unchanged"
        else:
            outcome = self._create_or_replace(
                "collections",
                f"collections/{collection.id}",
                document,
                what,
                exists=existing is not None,
            )
        logger.info("STAC API %s: %s %s", self._shown_url, what, outcome)
        return outcome

    def upsert_collection(self, collection: pystac.Collection) -> PublishOutcome:
        return self._publish_collection(collection, replace_existing=True)

    def ensure_collection(self, collection: pystac.Collection) -> PublishOutcome:
        return self._publish_collection(collection, replace_existing=False)

    def delete_collection(self, collection_id: str) -> None:
        """Remove a collection and its items (404 counts as done)."""
        what = f"collection {collection_id!r}"
        response = self._send("DELETE", f"collections/{collection_id}", what=what)
        if response.is_error and response.status_code != 404:
            raise self._refused(response, what)

    # items -----------------------------------------------------------------------

    @staticmethod
    def _item_what(collection_id: str, item_id: str) -> str:
        return f"item {item_id!r} of collection {collection_id!r}"

    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any] | None:
        return self._get_json(
            f"collections/{collection_id}/items/{item_id}",
            self._item_what(collection_id, item_id),
        )

    def item_url(self, collection_id: str, item_id: str) -> str:
        return f"{self._shown_url}/collections/{collection_id}/items/{item_id}"

    def get_items(self, collection_id: str, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        # One search per page of ids instead of one GET per item (5,090 items a partition);
        # ids and assets only: what skip-unchanged and the audit compare with the store.
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(item_ids), self.page_size):
            page = list(item_ids[start : start + self.page_size])
            what = f"search of {len(page)} items in collection {collection_id!r}"
            response = self._send(
                "POST",
                "search",
                what=what,
                json={
                    "collections": [collection_id],
                    "ids": page,
                    "limit": len(page),
                    "fields": {"include": ["id", "assets"], "exclude": []},
                },
            )
            if response.is_error:
                raise self._refused(response, what)
            found.update((f["id"], f) for f in response.json().get("features", []))
        return found

    def upsert_item(self, item: pystac.Item) -> PublishOutcome:
        collection_id = item.collection_id
        if not collection_id:
            raise CatalogError(f"item {item.id!r} has no collection id; set item.collection_id")
        what = self._item_what(collection_id, item.id)
        document = _to_json_dict(item)
        existing = self.get_item(collection_id, item.id)
        if existing is not None and same_content(document, existing):
            outcome: PublishOutcome = "unchanged"
        else:
            outcome = self._create_or_replace(
                f"collections/{collection_id}/items",
                f"collections/{collection_id}/items/{item.id}",
                document,
                what,
                exists=existing is not None,
            )
        logger.debug("STAC API %s: %s %s", self._shown_url, what, outcome)
        return outcome

    def bulk_upsert_items(
        self, collection_id: str, items: Iterable[pystac.Item], chunk_size: int = 500
    ) -> int:
        """Upsert many items with `POST /collections/{id}/bulk_items`, `chunk_size` a request
        (the endpoint times out on large payloads). Returns the number of items sent."""
        sent = 0
        chunk: dict[str, dict[str, Any]] = {}
        for item in items:
            if item.collection_id != collection_id:
                raise CatalogError(
                    f"item {item.id!r} belongs to collection {item.collection_id!r}, "
                    f"not {collection_id!r}"
                )
            chunk[item.id] = _to_json_dict(item)
            if len(chunk) >= chunk_size:
                sent += self._post_bulk(collection_id, chunk)
                chunk = {}
        if chunk:
            sent += self._post_bulk(collection_id, chunk)
        return sent

    def upsert_items(self, items: Sequence[pystac.Item]) -> list[PublishOutcome]:
        # One request per item is what made the legacy loads take days: bulk above a handful.
        if len(items) <= BULK_THRESHOLD:
            return super().upsert_items(items)
        self.bulk_upsert_items(items[0].collection_id or "", items)
        return ["upserted"] * len(items)

    def _post_bulk(self, collection_id: str, chunk: dict[str, dict[str, Any]]) -> int:
        ids = list(chunk)
        what = (
            f"bulk upsert of {len(ids)} items ({ids[0]!r}..{ids[-1]!r}) "
            f"into collection {collection_id!r}"
        )
        response = self._send(
            "POST",
            f"collections/{collection_id}/bulk_items",
            what=what,
            json={"items": chunk, "method": "upsert"},
        )
        if response.is_error:
            raise self._refused(response, what)
        logger.info("STAC API %s: %s done", self._shown_url, what)
        return len(ids)

    def iter_items(self, collection_id: str) -> Iterator[dict[str, Any]]:
        what = f"items of collection {collection_id!r}"
        url: str | None = f"collections/{collection_id}/items"
        params: dict[str, Any] | None = {"limit": self.page_size}
        while url is not None:
            response = self._send("GET", url, what=what, params=params)
            if response.status_code == 404:
                return
            if response.is_error:
                raise self._refused(response, what)
            page = response.json()
            yield from page.get("features", [])
            # The `next` link carries its own query (a pagination token): follow it verbatim.
            url = next(
                (link["href"] for link in page.get("links", []) if link.get("rel") == "next"),
                None,
            )
            params = None

    def delete_item(self, collection_id: str, item_id: str) -> None:
        what = self._item_what(collection_id, item_id)
        response = self._send("DELETE", f"collections/{collection_id}/items/{item_id}", what=what)
        if response.is_error and response.status_code != 404:
            raise self._refused(response, what)
