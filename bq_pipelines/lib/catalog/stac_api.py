"""A STAC API with the Transactions extension (stac-fastapi-pgstac), over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

import httpx
import pystac

from bq_pipelines.lib.catalog.base import Publisher, PublishOutcome, same_content, to_json_dict
from bq_pipelines.lib.errors import CatalogError
from bq_pipelines.lib.http_guard import verified_context
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import Deadline, Outage, RetryPolicy, with_retries

logger = logging.getLogger(__name__)

BULK_THRESHOLD = 20
# A request that hangs is abandoned after 30 s of silence (5 s to connect); each call is retried
# until 120 s have passed, so an outage of a minute is ridden out and a hung API costs a
# partition about two minutes, then a single attempt per call while it stays down (`Outage`).
API_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
API_RETRY = RetryPolicy(
    attempts=50, backoff_seconds=1.0, max_backoff_seconds=15.0, budget_seconds=120.0
)


class _ServerError(Exception):
    """A 5xx or 429 answer: worth retrying."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        super().__init__(f"HTTP {response.status_code} from {redact_url(response.request.url)}")


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, (httpx.TransportError, _ServerError))


def _capped(timeout: httpx.Timeout, deadline: Deadline) -> httpx.Timeout:
    """Each of the client's timeouts, cut to what remains of the retry budget (httpx has no
    timeout for a whole request: each one bounds a wait)."""

    def cap(seconds: float | None) -> float | None:
        return deadline.remaining() if seconds is None else deadline.cap(seconds)

    return httpx.Timeout(
        connect=cap(timeout.connect),
        read=cap(timeout.read),
        write=cap(timeout.write),
        pool=cap(timeout.pool),
    )


def _body_excerpt(response: httpx.Response, limit: int = 500) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= limit else text[:limit] + "…"


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
            base_url=self.base_url + "/",
            headers=dict(headers or {}),
            timeout=timeout,
            auth=auth,
            verify=verified_context(True),  # the process's (a new one loads the CA bundle)
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # HTTP ------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """One request with retries; returns any non-5xx answer for the caller to judge."""

        def attempt(deadline: Deadline) -> httpx.Response:
            timeout = _capped(self._client.timeout, deadline)
            response = self._client.request(method, url, timeout=timeout, **kwargs)
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
        document: dict[str, Any] = response.json()
        return document

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
        document = to_json_dict(collection)
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

    def get_items(
        self, collection_id: str, item_ids: Sequence[str], *, whole: bool = False
    ) -> dict[str, dict[str, Any]]:
        # One search per page of ids instead of one GET per item (5,090 items a partition);
        # ids and assets only unless `whole`: what skip-unchanged and the audit compare with
        # the store.
        fields = {} if whole else {"fields": {"include": ["id", "assets"], "exclude": []}}
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
                    **fields,
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
        document = to_json_dict(item)
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
            chunk[item.id] = to_json_dict(item)
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
