"""URLs with credentials: one redaction helper, used by every message, log line and print."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pystac
import pytest

from bq_pipelines.lib.catalog import StacApiPublisher
from bq_pipelines.lib.errors import SourceError
from bq_pipelines.lib.redaction import has_userinfo, redact_url
from bq_pipelines.lib.retry import RetryPolicy

SECRET = "hunter2-in-url"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host.org/a/b.tif?x=1", "https://host.org/a/b.tif?x=1"),
        ("http://user@host.org:8080/", "http://host.org:8080/"),
        ("ftp://a%40b:p%3Aw@ftp.example.org/x", "ftp://ftp.example.org/x"),
        ("s3://bucket/key@2x.tif", "s3://bucket/key@2x.tif"),  # '@' in a path is not userinfo
        ("/data/plain/path.tif", "/data/plain/path.tif"),
        ("http://u:pw@[::1/broken", "http://[::1/broken"),  # unparseable: still stripped
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert has_userinfo(url) is (url != shown)


def test_a_source_error_never_shows_credentials() -> None:
    error = SourceError(f"https://user:{SECRET}@mirror.example.org/x.tif", "HTTP 404")
    assert SECRET not in str(error) and SECRET not in error.url
    assert str(error) == "cannot fetch https://mirror.example.org/x.tif: HTTP 404"


@pytest.fixture
def publisher(stac_api_url: str) -> Iterator[StacApiPublisher]:
    url = stac_api_url.replace("://", f"://bq:{SECRET}@")
    # Retries as in production: pgstac's delete_collection can deadlock with another test's
    # writes (HTTP 500, seen once in a full run), which the publisher retries; retried requests
    # are logged too, and must not show the password either.
    retry = RetryPolicy(attempts=4, backoff_seconds=0.2, max_backoff_seconds=1.0)
    with StacApiPublisher(url, retry=retry, timeout=30) as client:
        yield client


def test_a_stac_api_url_with_credentials_works_and_never_shows_them(
    publisher: StacApiPublisher,
    stac_api_url: str,
    unique_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collection = pystac.Collection(
        id=f"redaction-{unique_id}",
        description="d",
        extent=pystac.Extent(
            pystac.SpatialExtent([[-75.0, 45.0, -74.0, 46.0]]),
            pystac.TemporalExtent.from_dict({"interval": [[None, None]]}),
        ),
        license="CC-BY-4.0",
    )
    caplog.set_level(logging.DEBUG)  # httpx logs every request URL at INFO
    try:
        assert publisher.upsert_collection(collection) in ("created", "updated", "unchanged")
        assert publisher.get_collection(collection.id) is not None
        item_url = publisher.item_url(collection.id, "x")
    finally:
        publisher.delete_collection(collection.id)
    assert item_url == f"{stac_api_url}/collections/{collection.id}/items/x"
    logged: list[Any] = [record.getMessage() for record in caplog.records]
    assert any(stac_api_url in line for line in logged)  # the requests were logged...
    assert not any(SECRET in line for line in logged)  # ...without the password
