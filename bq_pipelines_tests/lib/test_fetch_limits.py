"""Fetching URLs someone else chose (lib/sources FetchLimits, lib/http_guard.py), against real
local servers: every redirect hop checked, connections pinned to the guard's addresses (TLS
still verified against the host name), size and time limits, a check of the file's content."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest

from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.errors import RasterTooLarge, SourceError, SourceRefused
from bq_pipelines.lib.pipeline import ItemPlan, Services, SourceRef, run_items
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.sources import (
    AsyncHttpSession,
    FetchLimits,
    SourceFingerprint,
    fetch,
    probe,
    probe_async,
)
from bq_pipelines.lib.storage import LocalObjectStore
from bq_pipelines_testkit.http_host import LocalHttpHost, serving
from bq_pipelines_testkit.rasters import RasterSpec, write_raster
from bq_pipelines_tests.fixtures.tls import https_server, self_signed_certificate

FAST = RetryPolicy(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05)
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class NamedHosts:
    """A guard for tests: only the listed URL prefixes, each host name mapped to addresses of
    the test's choosing (names that resolve nowhere, so a connection can only go where the
    guard pinned it)."""

    def __init__(self, prefixes: list[str], addresses: dict[str, list[str]]) -> None:
        self.prefixes = prefixes
        self.names = addresses
        self.checked: list[str] = []

    def check_url(self, url: str) -> None:
        self.checked.append(url)
        if not any(url.startswith(prefix) for prefix in self.prefixes):
            raise SourceRefused(url, "not an allowed prefix")

    def addresses(self, host: str, port: int) -> list[str]:
        if host not in self.names:
            raise SourceRefused(host, "no address allowed")
        return self.names[host]

    def resolves(self, url: str) -> bool:
        return False


@pytest.fixture
def other_host(tmp_path: Path) -> Iterator[LocalHttpHost]:
    """A second local server: what a redirect must not reach."""
    with serving(tmp_path / "other_root") as host:
        yield host


def test_every_redirect_hop_is_checked_and_a_refused_one_is_never_contacted(
    http_host: LocalHttpHost, other_host: LocalHttpHost, tmp_path: Path
):
    other_host.put("secret.tif", PAYLOAD)
    http_host.fail("a.tif", status=302, times=None, headers={"Location": "/b.tif"})
    http_host.fail(
        "b.tif", status=307, times=None, headers={"Location": other_host.url("secret.tif")}
    )
    guard = NamedHosts([http_host.base_url + "/"], {"127.0.0.1": ["127.0.0.1"]})

    with pytest.raises(SourceRefused) as refused:
        fetch(http_host.url("a.tif"), tmp_path / "s", retry=FAST, limits=FetchLimits(guard=guard))

    assert other_host.url("secret.tif") in str(refused.value)
    hops = [http_host.url("a.tif"), http_host.url("b.tif"), other_host.url("secret.tif")]
    assert list(dict.fromkeys(guard.checked)) == hops
    assert other_host.requests == []
    assert list((tmp_path / "s").iterdir()) == []  # nothing staged, nothing left behind
    with pytest.raises(SourceRefused):  # HEAD follows redirects under the same guard
        probe(http_host.url("a.tif"), retry=FAST, limits=FetchLimits(guard=guard))
    assert other_host.requests == []


def test_allowed_redirects_are_followed(http_host: LocalHttpHost, tmp_path: Path):
    http_host.put("real/b.tif", PAYLOAD)
    http_host.fail("a.tif", status=301, times=None, headers={"Location": "/real/b.tif"})
    guard = NamedHosts([http_host.base_url + "/"], {"127.0.0.1": ["127.0.0.1"]})

    fetched = fetch(http_host.url("a.tif"), tmp_path, retry=FAST, limits=FetchLimits(guard=guard))

    assert fetched.path.read_bytes() == PAYLOAD
    assert list(dict.fromkeys(guard.checked)) == [
        http_host.url("a.tif"),
        http_host.url("real/b.tif"),
    ]


def test_connections_go_to_the_guards_addresses_only(http_host: LocalHttpHost, tmp_path: Path):
    # `mirror.invalid` resolves nowhere (RFC 2606): only the guard's pinned address reaches the
    # server, and the Host header still names the URL's host.
    http_host.put("x.tif", PAYLOAD)
    port = http_host.base_url.rsplit(":", 1)[1]
    url = f"http://mirror.invalid:{port}/x.tif"
    guard = NamedHosts(["http://mirror.invalid:"], {"mirror.invalid": ["127.0.0.1"]})

    fetched = fetch(url, tmp_path, retry=FAST, limits=FetchLimits(guard=guard))

    assert fetched.path.read_bytes() == PAYLOAD
    [request] = [r for r in http_host.requests if r.method == "GET"]
    assert request.headers["Host"] == f"mirror.invalid:{port}"
    refusing = NamedHosts(["http://mirror.invalid:"], {})
    with pytest.raises(SourceRefused, match="no address allowed"):
        fetch(url, tmp_path / "again", retry=FAST, limits=FetchLimits(guard=refusing))


def probed_async(url: str, guard: NamedHosts) -> SourceFingerprint:
    """`probe_async` (the ingestion API's probe) under `guard`, in an event loop of its own."""

    async def probe_once() -> SourceFingerprint:
        session = AsyncHttpSession(guard)
        try:
            return await probe_async(url, timeout=10, limits=FetchLimits(guard), http=session)
        finally:
            await session.aclose()

    return asyncio.run(probe_once())


def test_the_async_probe_checks_every_hop_and_never_contacts_a_refused_one(
    http_host: LocalHttpHost, other_host: LocalHttpHost
):
    other_host.put("secret.tif", PAYLOAD)
    http_host.put("real/b.tif", PAYLOAD)
    http_host.fail("a.tif", status=302, times=None, headers={"Location": "/b.tif"})
    http_host.fail(
        "b.tif", status=307, times=None, headers={"Location": other_host.url("secret.tif")}
    )
    http_host.fail("c.tif", status=301, times=None, headers={"Location": "/real/b.tif"})
    guard = NamedHosts([http_host.base_url + "/"], {"127.0.0.1": ["127.0.0.1"]})

    with pytest.raises(SourceRefused) as refused:
        probed_async(http_host.url("a.tif"), guard)

    assert other_host.url("secret.tif") in str(refused.value)
    hops = [http_host.url("a.tif"), http_host.url("b.tif"), other_host.url("secret.tif")]
    assert list(dict.fromkeys(guard.checked)) == hops
    assert other_host.requests == []
    assert probed_async(http_host.url("c.tif"), guard).size == len(PAYLOAD)
    assert guard.checked[-1] == http_host.url("real/b.tif")


def test_async_connections_go_to_the_guards_addresses_only(http_host: LocalHttpHost):
    http_host.put("x.tif", PAYLOAD)
    port = http_host.base_url.rsplit(":", 1)[1]
    url = f"http://mirror.invalid:{port}/x.tif"

    found = probed_async(
        url, NamedHosts(["http://mirror.invalid:"], {"mirror.invalid": ["127.0.0.1"]})
    )

    assert found.size == len(PAYLOAD)
    [request] = [r for r in http_host.requests if r.method == "HEAD"]
    assert request.headers["Host"] == f"mirror.invalid:{port}"
    with pytest.raises(SourceRefused, match="no address allowed"):
        probed_async(url, NamedHosts(["http://mirror.invalid:"], {}))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server whose certificate names `bq-mirror.test`; yields its port and the
    certificate (to trust it as a CA)."""
    cert_file = self_signed_certificate(tmp_path / "tls", "bq-mirror.test", "bq-mirror.test")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args: object) -> None:
            pass

    with https_server(tmp_path / "tls", Handler) as server:
        yield server.server_address[1], cert_file


def test_pinned_https_still_verifies_the_certificate_against_the_host_name(
    tls_server: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    port, cert_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust the test certificate
    local = ["127.0.0.1"]
    guard = NamedHosts(["https://"], {"bq-mirror.test": local, "other.test": local})

    fetched = fetch(
        f"https://bq-mirror.test:{port}/x.tif", tmp_path, retry=FAST, limits=FetchLimits(guard)
    )
    assert fetched.path.read_bytes() == PAYLOAD

    # Same address, another name: the certificate does not name it.
    with pytest.raises(SourceError, match="TLS certificate verify failed"):
        fetch(f"https://other.test:{port}/x.tif", tmp_path, retry=FAST, limits=FetchLimits(guard))


def test_the_async_probe_verifies_the_pinned_certificate_against_the_host_name(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
):
    port, cert_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    local = ["127.0.0.1"]
    guard = NamedHosts(["https://"], {"bq-mirror.test": local, "other.test": local})

    assert probed_async(f"https://bq-mirror.test:{port}/x.tif", guard).size == len(PAYLOAD)
    with pytest.raises(SourceError, match="TLS certificate verify failed"):
        probed_async(f"https://other.test:{port}/x.tif", guard)


def test_an_announced_size_over_the_limit_is_refused_before_the_body(
    http_host: LocalHttpHost, tmp_path: Path
):
    http_host.put("big.tif", PAYLOAD)

    with pytest.raises(SourceRefused, match=f"download limit of {len(PAYLOAD) - 1} bytes"):
        fetch(
            http_host.url("big.tif"),
            tmp_path / "s",
            retry=FAST,
            limits=FetchLimits(max_bytes=len(PAYLOAD) - 1),
        )

    assert http_host.count("GET") == 1  # refused, not retried
    assert list((tmp_path / "s").iterdir()) == []
    fetched = fetch(
        http_host.url("big.tif"), tmp_path, retry=FAST, limits=FetchLimits(max_bytes=len(PAYLOAD))
    )
    assert fetched.size == len(PAYLOAD)


def test_streamed_bytes_over_the_limit_are_refused(tmp_path: Path):
    # A local file announces no size to the budget: the count of written bytes stops it.
    source = tmp_path / "source.tif"
    source.write_bytes(PAYLOAD)
    staging = tmp_path / "staging"

    with pytest.raises(SourceRefused, match="download limit of 1000 bytes"):
        fetch(source.as_uri(), staging, retry=FAST, limits=FetchLimits(max_bytes=1000))

    assert list(staging.iterdir()) == []


def test_a_download_slower_than_the_time_limit_is_refused_and_not_retried_beyond_it(
    http_host: LocalHttpHost, tmp_path: Path
):
    http_host.put("slow.tif", PAYLOAD)
    http_host.delay("slow.tif", seconds=3, times=None)
    patient = RetryPolicy(attempts=10, backoff_seconds=0.2, max_backoff_seconds=0.5)

    with pytest.raises(SourceRefused, match=r"not downloaded within 1 s"):
        fetch(http_host.url("slow.tif"), tmp_path, retry=patient, limits=FetchLimits(max_seconds=1))

    # The read timeout (capped by the limit) ended the first attempts, the budget the retries.
    assert 1 <= http_host.count("GET") < 10


def test_the_file_check_runs_before_the_file_is_kept(http_host: LocalHttpHost, tmp_path: Path):
    http_host.put("fake.tif", b"<VRTDataset>" + PAYLOAD)
    seen: list[tuple[str, bytes]] = []

    def only_tiff(url: str, path: Path) -> None:
        seen.append((url, path.read_bytes()[:4]))
        if path.read_bytes()[:4] != b"II*\x00":
            raise SourceRefused(url, "not a GeoTIFF")

    with pytest.raises(SourceRefused, match="not a GeoTIFF"):
        fetch(
            http_host.url("fake.tif"),
            tmp_path / "s",
            retry=FAST,
            limits=FetchLimits(check_file=only_tiff),
        )

    assert seen == [(http_host.url("fake.tif"), b"<VRT")]
    assert list((tmp_path / "s").iterdir()) == []


def test_without_limits_a_fetch_is_unchanged(http_host: LocalHttpHost, tmp_path: Path):
    # Dataset sources are trusted: a redirect to another local server is followed.
    http_host.put("b.tif", PAYLOAD)
    http_host.fail("a.tif", status=302, times=None, headers={"Location": "/b.tif"})
    assert fetch(http_host.url("a.tif"), tmp_path, retry=FAST).path.read_bytes() == PAYLOAD


def test_the_pixel_limit_is_checked_by_the_pipeline_before_conversion(
    http_host: LocalHttpHost, tmp_path: Path
):
    # The ingestion API's limits, guard included: the same mechanism datasets use.
    source = write_raster(http_host.root / "wide.tif", RasterSpec(width=40, height=30, count=2))
    guard = NamedHosts([http_host.base_url + "/"], {"127.0.0.1": ["127.0.0.1"]})
    limits = FetchLimits(guard=guard, max_pixels=2399, settings_prefix="BQ_API_")
    services = Services(
        store=LocalObjectStore(tmp_path / "objects"),
        publisher=StaticCatalogPublisher(tmp_path / "catalog"),
        work_dir=tmp_path / "work",
        retry=FAST,
        fetch_limits=limits,
    )
    plan = ItemPlan(
        collection_id="c",
        item_id="wide",
        folder="c",
        file_name="wide.tif",
        sources=(SourceRef(http_host.url("wide.tif")),),
        cog=CogSettings(),
        datetime=datetime(2020, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(RasterTooLarge) as error:
        run_items([plan], services, "limits")
    assert str(error.value) == (
        f"cannot fetch {http_host.url('wide.tif')}: 40 x 30 pixels x 2 bands is 2400 pixels, "
        "more than the limit of 2399 (BQ_API_MAX_PIXELS)"
    )
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").rglob("*.tif"))
    # One band read is half the pixels.
    one_band = dataclasses.replace(
        plan, sources=(SourceRef(http_host.url("wide.tif"), bands=(1,)),)
    )
    collection = pystac.Collection(
        "c",
        "c",
        pystac.Extent(
            pystac.SpatialExtent([[-75.0, 49.0, -74.0, 50.0]]),
            pystac.TemporalExtent.from_dict({"interval": [[None, None]]}),
        ),
    )
    [result] = run_items([one_band], services, "limits", collection=collection).items
    assert result.cog.count == 1 and source.exists()
