"""Tests of lib/sources against real local servers: HTTP(S), FTP, local files, S3 (moto)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures as concurrent_futures
from pathlib import Path

import httpx
import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from bq_pipelines.lib.errors import SourceError, SourceRefused, TransientSourceError
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.sources import (
    AsyncHttpSession,
    FetchLimits,
    HttpSession,
    SourceFingerprint,
    describe_local,
    fetch,
    probe,
    probe_async,
)
from bq_pipelines.lib.url_policy import SourcePolicy
from bq_pipelines.lib.waiting import WaitTimeout, wait_until
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.static_host import static_host
from bq_pipelines_tests.fixtures.tls import https_server, self_signed_certificate

FAST = RetryPolicy(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05)
PAYLOAD = os.urandom(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
SECRET = "s3cr3t-p4ss"


def leftovers(folder: Path) -> list[str]:
    """Temporary files a fetch may have left behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def served(http_host: LocalHttpHost) -> str:
    """URL of a 300 kB file on the local HTTP host."""
    http_host.put("data/layer.tif", PAYLOAD)
    return http_host.url("data/layer.tif")


def test_http_fetch_streams_hashes_and_renames(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    fetched = fetch(served, staging, retry=FAST)

    assert fetched.path == staging / "layer.tif"
    assert fetched.path.read_bytes() == PAYLOAD
    assert fetched.sha256 == SHA256
    assert fetched.size == len(PAYLOAD)
    assert leftovers(staging) == []
    head = httpx.head(served)
    assert fetched.fingerprint.etag == head.headers["ETag"]
    assert fetched.fingerprint.last_modified == head.headers["Last-Modified"]
    assert fetched.fingerprint.size == len(PAYLOAD)
    assert http_host.count("GET") == 1


def test_a_static_web_server_is_probed_and_fetched_and_a_new_version_is_seen(
    tmp_path: Path,
) -> None:
    """nginx, as most data hosts are (and the API benchmark's source host): its HEAD gives the
    size, ETag and Last-Modified the probe records; a replaced file gives another token."""
    root = tmp_path / "www"
    (root / "data").mkdir(parents=True)
    (root / "data" / "layer.tif").write_bytes(PAYLOAD)
    with static_host(root, tmp_path / "nginx") as base_url:
        url = f"{base_url}/data/layer.tif"
        first = probe(url, retry=FAST)
        assert first.size == len(PAYLOAD) and first.etag and first.last_modified
        fetched = fetch(url, tmp_path / "staging", retry=FAST)
        assert fetched.sha256 == SHA256 and fetched.fingerprint == first

        replaced = root / "data" / "layer.tif"
        replaced.write_bytes(PAYLOAD[::-1])
        os.utime(replaced, (time.time() + 60, time.time() + 60))  # a later version
        assert probe(url, retry=FAST).token() != first.token()


def test_http_fetch_uses_file_name(served: str, tmp_path: Path) -> None:
    fetched = fetch(served, tmp_path, file_name="renamed.tif", retry=FAST)
    assert fetched.path == tmp_path / "renamed.tif"
    assert fetched.sha256 == SHA256


def test_http_retries_503_then_succeeds(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    http_host.fail("data/layer.tif", status=503, times=2)
    fetched = fetch(served, tmp_path, retry=FAST)
    assert fetched.sha256 == SHA256
    assert http_host.count("GET", "data/layer.tif") == 3


def test_http_truncated_body_is_retried_and_resumed(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    http_host.truncate("data/layer.tif", times=1)
    fetched = fetch(served, tmp_path, retry=FAST)

    assert fetched.path.read_bytes() == PAYLOAD
    assert fetched.sha256 == SHA256
    assert http_host.count("GET") == 2
    # The second GET continues after the half that arrived, guarded by If-Range.
    resumed = http_host.requests[-1].headers
    assert resumed["Range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert resumed["If-Range"] == httpx.head(served).headers["ETag"]
    assert leftovers(tmp_path) == []


def test_http_resume_restarts_when_the_file_changed(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    http_host.truncate("data/layer.tif", times=1)
    changed = PAYLOAD[::-1] + b"more"

    def replace_after_first_get() -> None:
        # Replaced even if no GET came: the test's own assertions then say what went wrong.
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: http_host.count("GET") >= 1, timeout=5, what="a GET", poll=0.005)
        time.sleep(0.05)  # let the truncated answer finish
        http_host.put("data/layer.tif", changed)

    worker = threading.Thread(target=replace_after_first_get)
    worker.start()
    # The backoff gives the worker time to replace the file between the two attempts.
    fetched = fetch(served, tmp_path, retry=RetryPolicy(3, 0.5, 0.5))
    worker.join()

    assert http_host.requests[-1].headers["Range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert fetched.path.read_bytes() == changed  # If-Range failed: the server sent it whole
    assert fetched.sha256 == hashlib.sha256(changed).hexdigest()


def test_http_404_fails_at_once_naming_the_url(http_host: LocalHttpHost, tmp_path: Path) -> None:
    url = http_host.url("data/missing.tif")
    with pytest.raises(SourceError) as caught:
        fetch(url, tmp_path, retry=FAST)

    assert not isinstance(caught.value, TransientSourceError)
    assert url in str(caught.value)
    assert "HTTP 404 Not Found" in str(caught.value)
    assert caught.value.not_found  # what the upstream sensor reads as "not published yet"
    assert http_host.count("GET") == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [401, 403, 410])
def test_http_client_errors_are_not_retried(
    http_host: LocalHttpHost, served: str, tmp_path: Path, status: int
) -> None:
    http_host.fail("data/layer.tif", status=status, times=None)
    with pytest.raises(SourceError, match=f"HTTP {status}") as caught:
        fetch(served, tmp_path, retry=FAST)
    assert not isinstance(caught.value, TransientSourceError)
    assert caught.value.not_found is (status == 410)
    assert http_host.count("GET") == 1


def test_http_persistent_503_gives_up_after_the_policy(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    http_host.fail("data/layer.tif", status=503, times=None)
    with pytest.raises(TransientSourceError, match="HTTP 503"):
        fetch(served, tmp_path, retry=FAST)
    assert http_host.count("GET") == FAST.attempts
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "layer.tif").exists()


def test_http_429_honours_retry_after_capped_by_max_backoff(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    http_host.fail("data/layer.tif", status=429, times=1, headers={"Retry-After": "30"})
    started = time.monotonic()
    fetched = fetch(served, tmp_path, retry=RetryPolicy(3, 0.01, 0.3))
    elapsed = time.monotonic() - started

    assert fetched.sha256 == SHA256
    assert 0.3 <= elapsed < 5  # waited the capped Retry-After, not 30 s
    assert http_host.count("GET") == 2


def test_http_read_timeout_is_retried(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    http_host.delay("data/layer.tif", seconds=1.0, times=1)
    fetched = fetch(served, tmp_path, retry=FAST, timeout=0.3)
    assert fetched.sha256 == SHA256
    assert http_host.count("GET") == 2


def test_http_connection_refused_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientSourceError, match="connection failed"):
        fetch("http://127.0.0.1:9/none.tif", tmp_path, retry=FAST, timeout=2)


def test_http_probe_uses_head(http_host: LocalHttpHost, served: str) -> None:
    fingerprint = probe(served, retry=FAST)
    assert fingerprint.size == len(PAYLOAD)
    assert fingerprint.etag and fingerprint.last_modified
    assert http_host.count("HEAD") == 1
    assert http_host.count("GET") == 0


def test_one_http_client_serves_every_probe_and_fetch_of_a_session(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    with HttpSession() as session:
        with session.client() as client:
            pass
        assert probe(served, retry=FAST, http=session).size == len(PAYLOAD)
        assert fetch(served, tmp_path, retry=FAST, http=session).sha256 == SHA256
        # Probing the file fetched (reuse check) and fetching again: still the same client.
        assert fetch(served, tmp_path, retry=FAST, http=session).sha256 == SHA256
        with session.client() as again:
            assert again is client and not client.is_closed
    assert client.is_closed
    assert http_host.count("HEAD") == 2 and http_host.count("GET") == 1


def moved_out_of_the_allowlist(http_host: LocalHttpHost) -> tuple[SourcePolicy, FetchLimits]:
    """A policy allowing data/ only, and data/moved.tif redirecting to outside/secret.tif."""
    policy = SourcePolicy([http_host.url("data/")])
    http_host.put("outside/secret.tif", PAYLOAD)
    http_host.fail(
        "data/moved.tif",
        status=302,
        times=None,
        headers={"Location": http_host.url("outside/secret.tif")},
    )
    return policy, FetchLimits(guard=policy, max_seconds=10)


def test_a_session_made_with_a_guard_shares_one_pinned_client_and_still_checks_every_hop(
    http_host: LocalHttpHost, served: str
) -> None:
    """The ingestion API's probes: one kept-alive client for its source policy, never a way
    around it (a redirect out of the allowlist is refused through the shared client too)."""
    policy, limits = moved_out_of_the_allowlist(http_host)
    with HttpSession(guard=policy) as session:
        with session.client(limits) as client:
            pass
        assert probe(served, retry=FAST, limits=limits, http=session).size == len(PAYLOAD)
        with pytest.raises(SourceRefused, match=r"outside/secret\.tif"):
            probe(http_host.url("data/moved.tif"), retry=FAST, limits=limits, http=session)
        with session.client(limits) as again:
            assert again is client and not client.is_closed
        # Another guard (another request's limits) never gets the shared client.
        other = FetchLimits(guard=SourcePolicy([http_host.url("data/")]), max_seconds=10)
        with session.client(other) as own, session.client() as unguarded:
            assert own is not client and unguarded is not client
    assert client.is_closed
    assert http_host.count("HEAD", "outside/secret.tif") == 0


class _AllAtOnce(http.server.BaseHTTPRequestHandler):
    """Answers a HEAD only once `barrier.parties` of them are in flight together."""

    protocol_version = "HTTP/1.1"
    barrier: threading.Barrier

    def do_HEAD(self) -> None:
        try:
            self.barrier.wait()
            self.send_response(200)
        except threading.BrokenBarrierError:
            self.send_response(503)  # some probe waited for another's connection
        self.send_header("Content-Length", "1")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_shared_pinned_client_never_makes_a_probe_wait_for_a_connection() -> None:
    """Threads probing through one shared client (HttpSession is shared between threads) each
    get a connection of their own at once. A probe queued for a connection could be handed one
    the pool was closing (httpcore's sync pool, encode/httpcore#1110), and fail as a source that
    does not answer."""
    concurrent = 40  # anyio's thread pool, which ran the API's requests before they were async
    handler = type("Handler", (_AllAtOnce,), {"barrier": threading.Barrier(concurrent, timeout=20)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    policy = SourcePolicy([f"{base}/"])
    limits = FetchLimits(guard=policy, max_seconds=60)
    try:
        with HttpSession(guard=policy) as session:

            def one(index: int) -> int | None:
                return probe(
                    f"{base}/{index}.tif", retry=FAST, timeout=60, limits=limits, http=session
                ).size

            with concurrent_futures.ThreadPoolExecutor(concurrent) as pool:
                sizes = list(pool.map(one, range(concurrent)))
    finally:
        server.shutdown()
        server.server_close()
    assert sizes == [1] * concurrent


def test_an_async_session_shares_one_pinned_client_and_still_checks_every_hop(
    http_host: LocalHttpHost, served: str
) -> None:
    """The ingestion API's probes in its event loop: the same policy, the same answers."""
    policy, limits = moved_out_of_the_allowlist(http_host)
    http_host.fail("data/head-refused.tif", status=405, times=None, method="HEAD")
    http_host.put("data/head-refused.tif", PAYLOAD)

    async def probes() -> list[SourceFingerprint]:
        session = AsyncHttpSession(policy)
        try:
            found = [await probe_async(served, timeout=10, limits=limits, http=session)]
            client = session.client()
            with pytest.raises(SourceRefused, match=r"outside/secret\.tif"):
                await probe_async(
                    http_host.url("data/moved.tif"), timeout=10, limits=limits, http=session
                )
            with pytest.raises(SourceError, match="HTTP 404") as missing:
                await probe_async(
                    http_host.url("data/none.tif"), timeout=10, limits=limits, http=session
                )
            assert missing.value.not_found
            with pytest.raises(SourceRefused):  # the first URL is checked before any request
                await probe_async(
                    http_host.url("outside/secret.tif"), timeout=10, limits=limits, http=session
                )
            url = http_host.url("data/head-refused.tif")
            found.append(await probe_async(url, timeout=10, limits=limits, http=session))
            assert session.client() is client
            return found
        finally:
            await session.aclose()

    served_fingerprint, ranged = asyncio.run(probes())
    assert served_fingerprint == probe(served, retry=FAST)
    assert ranged.size == len(PAYLOAD)
    assert http_host.count("HEAD", "outside/secret.tif") == 0


def test_http_probe_falls_back_to_ranged_get_when_head_is_refused(
    http_host: LocalHttpHost, served: str
) -> None:
    http_host.fail("data/layer.tif", status=405, times=None, method="HEAD")
    fingerprint = probe(served, retry=FAST)

    assert fingerprint.size == len(PAYLOAD)
    assert fingerprint.etag == probe_get_etag(served)
    assert http_host.requests[-1].headers["Range"] == "bytes=0-0"


def probe_get_etag(url: str) -> str:
    return httpx.get(url, headers={"Range": "bytes=0-0"}).headers["ETag"]


def test_unchanged_file_is_not_downloaded_again(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    first = fetch(served, tmp_path, retry=FAST)
    second = fetch(served, tmp_path, retry=FAST)

    assert second.path == first.path
    assert second.sha256 == SHA256
    assert second.fingerprint.token() == first.fingerprint.token()
    assert http_host.count("GET") == 1
    assert http_host.count("HEAD") == 1


def test_changed_file_is_downloaded_again(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    fetch(served, tmp_path, retry=FAST)
    changed = b"new version"
    http_host.put("data/layer.tif", changed)
    again = fetch(served, tmp_path, retry=FAST)

    assert again.path.read_bytes() == changed
    assert again.sha256 == hashlib.sha256(changed).hexdigest()
    assert http_host.count("GET") == 2


def test_damaged_destination_is_downloaded_again(
    http_host: LocalHttpHost, served: str, tmp_path: Path
) -> None:
    fetched = fetch(served, tmp_path, retry=FAST)
    fetched.path.write_bytes(b"damaged")
    again = fetch(served, tmp_path, retry=FAST)
    assert again.path.read_bytes() == PAYLOAD
    assert http_host.count("GET") == 2


def test_credentials_never_appear_in_errors_or_logs(
    http_host: LocalHttpHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    http_host.fail("data/flaky.tif", status=503, times=None)
    caplog.set_level(logging.DEBUG)
    base = http_host.base_url.replace("http://", f"http://reader:{SECRET}@")
    errors: list[SourceError] = []
    for path in ("data/missing.tif", "data/flaky.tif"):
        with pytest.raises(SourceError) as caught:
            fetch(f"{base}/{path}", tmp_path, retry=FAST)
        errors.append(caught.value)

    for error in errors:
        assert SECRET not in str(error) and SECRET not in error.url
        assert "reader@" not in str(error)
        assert error.url.startswith(http_host.base_url)
    assert SECRET not in caplog.text
    # The credentials were still sent: basic auth reached the server.
    assert http_host.requests[0].headers["Authorization"].startswith("Basic ")


def test_url_without_file_name_needs_file_name(http_host: LocalHttpHost, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="file_name"):
        fetch(http_host.url(""), tmp_path, retry=FAST)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def https_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTPS server with a self-signed certificate (which clients must refuse)."""
    folder = tmp_path_factory.mktemp("tls")
    self_signed_certificate(folder, "127.0.0.1")
    with https_server(folder, http.server.BaseHTTPRequestHandler) as server:
        yield f"https://127.0.0.1:{server.server_address[1]}/secure.tif"


def test_https_self_signed_certificate_is_refused(https_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        fetch(https_url, tmp_path, retry=RetryPolicy(3, 1.0, 1.0))

    assert not isinstance(caught.value, TransientSourceError)
    assert "certificate verify failed" in str(caught.value)
    assert https_url in str(caught.value)
    assert time.monotonic() - started < 1.0  # not retried


# --------------------------------------------------------------------------- FTP


@pytest.fixture(scope="module")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A pyftpdlib server: (base URL with port, root folder). Users: anonymous, alice/SECRET."""
    root = tmp_path_factory.mktemp("ftp_root")
    authorizer = DummyAuthorizer()
    authorizer.add_user("alice", SECRET, str(root), perm="elr")
    authorizer.add_anonymous(str(root))
    # auth_failed_timeout: pyftpdlib stalls 3 s after a bad password by default.
    settings = {"authorizer": authorizer, "banner": "test", "auth_failed_timeout": 0.05}
    handler = type("Handler", (FTPHandler,), settings)
    server = FTPServer(("127.0.0.1", 0), handler)
    stopping = threading.Event()

    def serve() -> None:
        # pyftpdlib's loop is not thread-safe: run and close it in this thread only.
        while not stopping.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.address[1]}", root
    stopping.set()
    thread.join(timeout=5)


def test_ftp_fetch_with_credentials(ftp_server: tuple[str, Path], tmp_path: Path) -> None:
    address, root = ftp_server
    (root / "lc").mkdir(exist_ok=True)
    (root / "lc" / "ESACCI-LC-1992.tif").write_bytes(PAYLOAD)
    url = f"ftp://alice:{SECRET}@{address}/lc/ESACCI-LC-1992.tif"
    fetched = fetch(url, tmp_path, retry=FAST, timeout=5)

    assert fetched.path.read_bytes() == PAYLOAD
    assert fetched.sha256 == SHA256
    assert fetched.fingerprint.size == len(PAYLOAD)
    assert fetched.fingerprint.last_modified  # from MDTM
    assert SECRET not in fetched.url and SECRET not in fetched.fingerprint.token()
    assert leftovers(tmp_path) == []


def test_ftp_anonymous_fetch_probe_and_reuse(ftp_server: tuple[str, Path], tmp_path: Path) -> None:
    address, root = ftp_server
    (root / "anon.bin").write_bytes(b"public bytes")
    url = f"ftp://{address}/anon.bin"
    fingerprint = probe(url, retry=FAST, timeout=5)
    first = fetch(url, tmp_path, retry=FAST, timeout=5)
    mtime = first.path.stat().st_mtime_ns
    second = fetch(url, tmp_path, retry=FAST, timeout=5)

    assert fingerprint.size == len(b"public bytes")
    assert first.fingerprint == fingerprint
    assert second.path.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_ftp_missing_file_is_not_found(ftp_server: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = ftp_server
    url = f"ftp://{address}/nope/missing.tif"
    with pytest.raises(SourceError, match="not found") as caught:
        fetch(url, tmp_path, retry=FAST, timeout=5)
    assert not isinstance(caught.value, TransientSourceError)
    assert url in str(caught.value)


def test_ftp_wrong_password_is_refused_without_leaking_it(
    ftp_server: tuple[str, Path], tmp_path: Path
) -> None:
    address, _ = ftp_server
    with pytest.raises(SourceError, match="login refused") as caught:
        fetch(f"ftp://alice:wrong-{SECRET}@{address}/anon.bin", tmp_path, retry=FAST, timeout=5)
    assert SECRET not in str(caught.value)


# --------------------------------------------------------------------------- local files


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    source = tmp_path / "source" / "ghmts 2016.tif"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    return source


@pytest.mark.parametrize("as_uri", [False, True], ids=["plain-path", "file-url"])
def test_local_file_is_copied(local_file: Path, tmp_path: Path, as_uri: bool) -> None:
    url = local_file.as_uri() if as_uri else str(local_file)
    staging = tmp_path / "staging"
    fetched = fetch(url, staging)

    assert fetched.path == staging / "ghmts 2016.tif"
    assert fetched.sha256 == SHA256
    assert fetched.fingerprint.size == len(PAYLOAD)
    assert fetched.fingerprint.last_modified
    assert local_file.read_bytes() == PAYLOAD
    assert leftovers(staging) == []


def test_local_file_already_in_place_is_not_copied(local_file: Path) -> None:
    fetched = fetch(str(local_file), local_file.parent)
    assert fetched.path == local_file
    assert fetched.sha256 == SHA256
    assert sorted(p.name for p in local_file.parent.iterdir()) == ["ghmts 2016.tif"]


def test_missing_local_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.tif"
    with pytest.raises(SourceError, match="file not found") as caught:
        fetch(missing.as_uri(), tmp_path / "staging")
    assert str(missing) in str(caught.value)


def test_local_probe_is_a_stat(local_file: Path) -> None:
    fingerprint = probe(str(local_file))
    assert fingerprint.size == len(PAYLOAD)
    assert fingerprint.token() == probe(local_file.as_uri()).token().replace(
        local_file.as_uri(), str(local_file)
    )


@pytest.mark.parametrize("as_uri", [False, True], ids=["plain-path", "file-url"])
def test_local_files_are_confined_to_the_limits_root(
    local_file: Path, tmp_path: Path, as_uri: bool
) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    inside = root / "data" / "in.tif"
    inside.write_bytes(PAYLOAD)
    (root / "data" / "out.tif").symlink_to(local_file)  # a link leading out of the root
    limits = FetchLimits(local_root=root, settings_prefix="BQ_")
    outside = re.escape(f"outside the local data root {root.resolve()} (BQ_LOCAL_DATA_ROOT)")

    def url(path: Path) -> str:
        return path.as_uri() if as_uri else str(path)

    assert fetch(url(inside), tmp_path / "staging", limits=limits).sha256 == SHA256
    assert describe_local(url(inside), limits).path == inside.resolve()
    assert probe(url(inside), limits=limits).size == len(PAYLOAD)
    for path in (local_file, root / "data" / "out.tif", root / "data" / ".." / ".." / "x"):
        with pytest.raises(SourceRefused, match=rf"resolves to .*, {outside}"):
            fetch(url(path), tmp_path / "staging", limits=limits)
        with pytest.raises(SourceRefused, match=outside):
            describe_local(url(path), limits)
        with pytest.raises(SourceRefused, match=outside):
            probe(url(path), limits=limits)


# --------------------------------------------------------------------------- S3


@pytest.fixture
def aws_env(services_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Standard AWS variables pointing at the local moto server; returns the endpoint URL."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", services_env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", services_env["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", services_env["BQ_S3_REGION"])
    return services_env["BQ_S3_ENDPOINT_URL"]


def test_s3_fetch_and_probe(s3_client, s3_bucket: str, aws_env: str, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="io/gbif/heatmap all.tif", Body=PAYLOAD)
    url = f"s3://{s3_bucket}/io/gbif/heatmap all.tif"
    fingerprint = probe(url, retry=FAST, s3_endpoint_url=aws_env)
    fetched = fetch(url, tmp_path, retry=FAST, s3_endpoint_url=aws_env)

    head = s3_client.head_object(Bucket=s3_bucket, Key="io/gbif/heatmap all.tif")
    assert fetched.path == tmp_path / "heatmap all.tif"
    assert fetched.sha256 == SHA256
    assert fingerprint.etag == head["ETag"] == fetched.fingerprint.etag
    assert fingerprint.size == len(PAYLOAD)
    assert fingerprint.token() == fetched.fingerprint.token()
    assert leftovers(tmp_path) == []


def test_s3_missing_key_is_not_found(s3_bucket: str, aws_env: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/io/none.tif"
    with pytest.raises(SourceError, match="not found") as caught:
        fetch(url, tmp_path, retry=FAST, s3_endpoint_url=aws_env)
    assert not isinstance(caught.value, TransientSourceError)
    assert url in str(caught.value)
    with pytest.raises(SourceError, match="not found"):
        probe(url, retry=FAST, s3_endpoint_url=aws_env)
