"""Object stores against real backends: a tmp folder, and the local moto S3 server."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.config
import botocore.session
import numpy as np
import pytest
import rasterio

from bq_pipelines.lib.errors import StorageError
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.storage import (
    COG_MEDIA_TYPE,
    MIB,
    LocalObjectStore,
    ObjectOwner,
    ObjectStore,
    S3ObjectStore,
    StoredObject,
    object_key,
    s3_client,
)
from bq_pipelines.orchestration.resources import S3ObjectStoreResource
from bq_pipelines_testkit.rasters import RasterSpec, raster_values, write_raster
from bq_pipelines_testkit.values import stored_object
from bq_pipelines_tests.fixtures.services import rasterio_s3_env

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def write_bytes(path: Path, data: bytes) -> tuple[Path, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, sha256_file(path)


def error_chain_text(exc: BaseException) -> str:
    """Message and repr of an exception and everything it chains, as a log would show them."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.fixture(scope="session")
def store_client(services_env: dict[str, str]):
    """A client built by our own helper (standard retries, path addressing) on moto."""
    return s3_client(
        services_env["BQ_S3_ENDPOINT_URL"],
        services_env["BQ_S3_REGION"],
        services_env["AWS_ACCESS_KEY_ID"],
        services_env["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def write_requests(store_client) -> Iterator[list[str]]:
    """Names of the S3 write operations `store_client` sends (observed, not intercepted)."""
    seen: list[str] = []

    def record(model, **_: object) -> None:
        seen.append(model.name)

    events = [
        f"before-call.s3.{op}"
        for op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
    ]
    for event in events:
        store_client.meta.events.register(event, record)
    yield seen
    for event in events:
        store_client.meta.events.unregister(event, record)


# ---------------------------------------------------------------------------------------------
# Keys


@pytest.mark.parametrize(
    ("prefix", "folder", "file_name", "expected"),
    [
        ("io", "chelsa", "tas_2020.tif", "io/chelsa/tas_2020.tif"),
        ("io/", "/chelsa/", "tas.tif", "io/chelsa/tas.tif"),
        ("", "chelsa", "tas.tif", "chelsa/tas.tif"),
        ("/", "chelsa", "tas.tif", "chelsa/tas.tif"),
        ("io/v2", "chelsa/monthly", "tas 01.tif", "io/v2/chelsa/monthly/tas 01.tif"),
        ("io", "forêt", "carte..finale.tif", "io/forêt/carte..finale.tif"),
    ],
)
def test_object_key(prefix: str, folder: str, file_name: str, expected: str) -> None:
    assert object_key(prefix, folder, file_name) == expected


@pytest.mark.parametrize(
    ("prefix", "folder", "file_name", "field"),
    [
        ("io", "..", "a.tif", "folder"),
        ("io", "a/../b", "a.tif", "folder"),
        ("../io", "a", "a.tif", "prefix"),
        ("io", "a", "..", "file_name"),
        ("io", "a", ".", "file_name"),
        ("io", "", "a.tif", "folder"),
        ("io", "/", "a.tif", "folder"),
        ("io", "a", "", "file_name"),
        ("io//x", "a", "a.tif", "prefix"),
        ("io", "a//b", "a.tif", "folder"),
        ("io", "a", "sub/a.tif", "file_name"),
        ("io", "a\\b", "a.tif", "folder"),
        ("io", "a", "a\\b.tif", "file_name"),
        ("io", "a", "a\nb.tif", "file_name"),
        ("io", " ", "a.tif", "folder"),
    ],
)
def test_object_key_rejects(prefix: str, folder: str, file_name: str, field: str) -> None:
    with pytest.raises(StorageError, match=rf"invalid object key {field}="):
        object_key(prefix, folder, file_name)


# ---------------------------------------------------------------------------------------------
# Local store


def test_local_put_then_stat(tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "src" / "a.tif", b"cog bytes")
    store = LocalObjectStore(tmp_path / "store")

    stored = store.put_file(source, "io/col/a.tif", sha256=sha)

    target = tmp_path / "store" / "io" / "col" / "a.tif"
    assert stored == StoredObject("io/col/a.tif", str(target), 9, sha, uploaded=True)
    assert target.read_bytes() == b"cog bytes"
    assert store.stat("io/col/a.tif") == StoredObject(
        "io/col/a.tif", str(target), 9, sha, uploaded=False
    )
    assert store.stat("io/col/missing.tif") is None
    assert store.gdal_path("io/col/a.tif") == str(target)


def test_local_objects_are_world_readable(tmp_path: Path) -> None:
    # Served by a web server or read by another user: not mkstemp's 0600, nor the source's mode.
    source, sha = write_bytes(tmp_path / "src" / "a.tif", b"cog bytes")
    source.chmod(0o600)
    LocalObjectStore(tmp_path / "store").put_file(source, "io/col/a.tif", sha256=sha)

    folder = tmp_path / "store" / "io" / "col"
    for path in (folder / "a.tif", folder / "a.tif.sha256"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_local_sidecar_is_sha256sum_format(tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"abc")
    store = LocalObjectStore(tmp_path / "store")
    store.put_file(source, "io/col/a.tif", sha256=sha)

    folder = tmp_path / "store" / "io" / "col"
    assert (folder / "a.tif.sha256").read_text() == f"{sha}  a.tif\n"
    subprocess.run(["sha256sum", "--check", "--quiet", "a.tif.sha256"], cwd=folder, check=True)


def test_local_same_checksum_is_skipped(tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"v1")
    store = LocalObjectStore(tmp_path / "store")
    store.put_file(source, "io/a.tif", sha256=sha)
    before = os.stat(tmp_path / "store" / "io" / "a.tif")

    again = store.put_file(source, "io/a.tif", sha256=sha)

    after = os.stat(tmp_path / "store" / "io" / "a.tif")
    assert again.uploaded is False
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_local_changed_content_is_rewritten(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    first, sha1 = write_bytes(tmp_path / "v1.tif", b"version one")
    second, sha2 = write_bytes(tmp_path / "v2.tif", b"version two!")
    store.put_file(first, "io/a.tif", sha256=sha1)

    stored = store.put_file(second, "io/a.tif", sha256=sha2)

    assert stored.uploaded is True
    assert (tmp_path / "store" / "io" / "a.tif").read_bytes() == b"version two!"
    assert stored_object(store, "io/a.tif").sha256 == sha2


def test_local_stat_records_missing_sidecar(tmp_path: Path) -> None:
    """A file put there by hand (or a crash before the sidecar) is hashed once, then cheap."""
    hand_made = tmp_path / "store" / "io" / "a.tif"
    hand_made.parent.mkdir(parents=True)
    hand_made.write_bytes(b"by hand")

    stored = LocalObjectStore(tmp_path / "store").stat("io/a.tif")

    assert stored is not None and stored.sha256 == sha256_file(hand_made)
    assert hand_made.with_name("a.tif.sha256").exists()


def test_local_list_and_delete(tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    store = LocalObjectStore(tmp_path / "store")
    keys = ["io/a/1.tif", "io/a/2.tif", "io/ab/3.tif", "other/4.tif"]
    for key in keys:
        store.put_file(source, key, sha256=sha)
    (tmp_path / "store" / "io" / "a" / ".bq-tmp-5.tif.x").write_bytes(b"partial")

    assert store.list_keys("io/a/") == ["io/a/1.tif", "io/a/2.tif"]
    assert store.list_keys("io/a") == ["io/a/1.tif", "io/a/2.tif", "io/ab/3.tif"]
    assert store.list_keys("") == keys
    assert store.list_keys("nothing/here") == []

    store.delete("io/ab/3.tif")
    store.delete("io/ab/3.tif")  # idempotent, like S3

    assert store.list_keys("io/") == ["io/a/1.tif", "io/a/2.tif"]
    assert not (tmp_path / "store" / "io" / "ab").exists()  # empty folders go too
    assert store.stat("io/ab/3.tif") is None


def test_local_href_with_base_url(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, base_url="https://example.org/data/")
    assert store.href("io/col/tas 01.tif") == "https://example.org/data/io/col/tas%2001.tif"
    assert LocalObjectStore(tmp_path).href("io/a.tif") == str(tmp_path / "io" / "a.tif")


@pytest.mark.parametrize("key", ["../escape.tif", "io/../../escape.tif", "/abs.tif", "a\\b.tif"])
def test_local_rejects_keys_escaping_root(tmp_path: Path, key: str) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    store = LocalObjectStore(tmp_path / "store")
    with pytest.raises(StorageError, match="invalid object key"):
        store.put_file(source, key, sha256=sha)
    assert not (tmp_path / "escape.tif").exists()


def test_local_list_rejects_prefix_escaping_root(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="invalid object key prefix="):
        LocalObjectStore(tmp_path / "store").list_keys("../")


def test_local_rejects_bad_sha256(tmp_path: Path) -> None:
    source, _ = write_bytes(tmp_path / "a.tif", b"x")
    with pytest.raises(StorageError, match="invalid sha256"):
        LocalObjectStore(tmp_path / "store").put_file(source, "io/a.tif", sha256="ABC")


def test_local_raster_opens_at_gdal_path(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="int16", nodata=-9999)
    source = write_raster(tmp_path / "src.tif", spec)
    store = LocalObjectStore(tmp_path / "store")
    store.put_file(source, "io/col/r.tif", sha256=sha256_file(source))

    with rasterio.open(store.gdal_path("io/col/r.tif")) as src:
        np.testing.assert_array_equal(src.read(), raster_values(spec))


# ---------------------------------------------------------------------------------------------
# S3 store (moto)


def test_s3_put_then_stat(store_client, s3_bucket: str, tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"cog bytes")
    store = S3ObjectStore(store_client, s3_bucket)

    stored = store.put_file(source, "io/col/a.tif", sha256=sha)

    expected_href = f"s3://{s3_bucket}/io/col/a.tif"
    assert stored == StoredObject("io/col/a.tif", expected_href, 9, sha, uploaded=True)
    assert store.stat("io/col/a.tif") == StoredObject(
        "io/col/a.tif", expected_href, 9, sha, uploaded=False
    )
    assert store.stat("io/col/missing.tif") is None
    head = store_client.head_object(Bucket=s3_bucket, Key="io/col/a.tif")
    assert head["ContentType"] == COG_MEDIA_TYPE
    # The etag expected of the bytes, for a store that would keep no checksum.
    assert head["Metadata"] == {"sha256": sha, "etag": hashlib.md5(b"cog bytes").hexdigest()}
    body = store_client.get_object(Bucket=s3_bucket, Key="io/col/a.tif")["Body"].read()
    assert body == b"cog bytes"


def test_s3_same_checksum_is_not_uploaded_again(
    store_client, s3_bucket: str, tmp_path: Path, write_requests: list[str]
) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"v1")
    store = S3ObjectStore(store_client, s3_bucket)
    store.put_file(source, "io/a.tif", sha256=sha)
    before = store_client.head_object(Bucket=s3_bucket, Key="io/a.tif")
    assert write_requests == ["PutObject"]

    again = store.put_file(source, "io/a.tif", sha256=sha)

    after = store_client.head_object(Bucket=s3_bucket, Key="io/a.tif")
    assert again.uploaded is False
    assert write_requests == ["PutObject"]  # no second write request at all
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])


def test_s3_changed_content_is_uploaded_again(
    store_client, s3_bucket: str, tmp_path: Path, write_requests: list[str]
) -> None:
    store = S3ObjectStore(store_client, s3_bucket)
    first, sha1 = write_bytes(tmp_path / "v1.tif", b"version one")
    second, sha2 = write_bytes(tmp_path / "v2.tif", b"version two!")
    store.put_file(first, "io/a.tif", sha256=sha1)

    stored = store.put_file(second, "io/a.tif", sha256=sha2)

    assert stored.uploaded is True
    assert write_requests == ["PutObject", "PutObject"]
    body = store_client.get_object(Bucket=s3_bucket, Key="io/a.tif")["Body"].read()
    assert body == b"version two!"
    assert stored_object(store, "io/a.tif").sha256 == sha2


@pytest.mark.parametrize("public_read", [True, False])
def test_s3_public_read_acl(
    store_client, s3_bucket: str, tmp_path: Path, public_read: bool
) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    S3ObjectStore(store_client, s3_bucket, public_read=public_read).put_file(
        source, "io/a.tif", sha256=sha
    )

    grants = store_client.get_object_acl(Bucket=s3_bucket, Key="io/a.tif")["Grants"]
    public = {g["Permission"] for g in grants if g["Grantee"].get("URI") == ALL_USERS}
    assert public == ({"READ"} if public_read else set())


@pytest.mark.parametrize(("public_read", "status"), [(True, 200), (False, 403)])
def test_s3_public_href_anonymous_get(
    store_client,
    services_env: dict[str, str],
    s3_bucket: str,
    tmp_path: Path,
    public_read: bool,
    status: int,
) -> None:
    """The href a STAC item carries opens without credentials only for public-read objects."""
    source, sha = write_bytes(tmp_path / "a.tif", b"public bytes")
    base_url = f"{services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}"
    store = S3ObjectStore(store_client, s3_bucket, base_url, public_read=public_read)
    href = store.put_file(source, "io/a.tif", sha256=sha).href

    try:
        with urllib.request.urlopen(href, timeout=10) as response:
            got = response.status
            assert response.read() == b"public bytes"
    except urllib.error.HTTPError as exc:
        got = exc.code
    assert got == status


def test_s3_multipart_above_threshold(
    store_client, s3_bucket: str, tmp_path: Path, write_requests: list[str]
) -> None:
    data = os.urandom(6 * MIB)
    source, sha = write_bytes(tmp_path / "big.tif", data)
    store = S3ObjectStore(
        store_client, s3_bucket, multipart_chunk_bytes=5 * MIB, single_put_max_bytes=5 * MIB
    )

    stored = store.put_file(source, "io/big.tif", sha256=sha)

    assert stored.uploaded and stored.size == 6 * MIB
    assert sorted(write_requests) == sorted(
        ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"]
    )
    head = store_client.head_object(Bucket=s3_bucket, Key="io/big.tif", ChecksumMode="ENABLED")
    parts = [data[: 5 * MIB], data[5 * MIB :]]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    md5s = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    # S3's composite checksum of the parts (S3 adds "-2", moto does not) and multipart ETag.
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()
    assert head["ETag"].strip('"') == f"{md5s}-2"
    # Recorded at upload: the store vouches for the sha256 only when it reports these.
    assert head["Metadata"] == {
        "sha256": sha,
        "sha256-composite": base64.b64encode(composite).decode(),
        "etag": f"{md5s}-2",
    }
    assert stored_object(store, "io/big.tif").sha256 == sha
    assert head["ContentType"] == COG_MEDIA_TYPE
    body = store_client.get_object(Bucket=s3_bucket, Key="io/big.tif")["Body"].read()
    assert body == source.read_bytes()


def test_s3_below_threshold_is_single_put(
    store_client, s3_bucket: str, tmp_path: Path, write_requests: list[str]
) -> None:
    source, sha = write_bytes(tmp_path / "small.tif", os.urandom(MIB))
    store = S3ObjectStore(store_client, s3_bucket, multipart_threshold_bytes=5 * MIB)
    store.put_file(source, "io/small.tif", sha256=sha)
    assert write_requests == ["PutObject"]


def test_s3_list_and_delete(store_client, s3_bucket: str, tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    store = S3ObjectStore(store_client, s3_bucket)
    keys = ["io/a/1.tif", "io/a/2.tif", "io/ab/3.tif", "other/4.tif"]
    for key in keys:
        store.put_file(source, key, sha256=sha)

    assert store.list_keys("io/a/") == ["io/a/1.tif", "io/a/2.tif"]
    assert store.list_keys("io/a") == ["io/a/1.tif", "io/a/2.tif", "io/ab/3.tif"]
    assert store.list_keys("") == keys

    store.delete("io/ab/3.tif")
    store.delete("io/ab/3.tif")  # idempotent

    assert store.list_keys("io/") == ["io/a/1.tif", "io/a/2.tif"]
    assert store.stat("io/ab/3.tif") is None


def test_s3_list_paginates(store_client, s3_bucket: str) -> None:
    keys = sorted(f"io/p/{i:04d}.tif" for i in range(1005))  # list_objects_v2 pages at 1000

    def put(key: str) -> None:
        store_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")

    with ThreadPoolExecutor(max_workers=16) as pool:  # boto3 clients are thread-safe
        list(pool.map(put, keys))

    assert S3ObjectStore(store_client, s3_bucket).list_keys("io/p/") == keys
    # Batch cleanup (2 requests) instead of the fixture's 1005 single deletes.
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        store_client.delete_objects(Bucket=s3_bucket, Delete={"Objects": batch})


def test_s3_href_and_gdal_path(store_client) -> None:
    store = S3ObjectStore(store_client, "bq-io", base_url="http://127.0.0.1:9010/bq-io")
    assert store.href("io/c/tas 01.tif") == "http://127.0.0.1:9010/bq-io/io/c/tas%2001.tif"
    assert store.gdal_path("io/c/tas.tif") == "/vsis3/bq-io/io/c/tas.tif"
    assert S3ObjectStore(store_client, "bq-io").href("io/a.tif") == "s3://bq-io/io/a.tif"


@pytest.mark.parametrize("key", ["../a.tif", "io//a.tif", "/io/a.tif", "io/a\\b.tif"])
def test_s3_rejects_bad_keys(store_client, s3_bucket: str, tmp_path: Path, key: str) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    with pytest.raises(StorageError, match="invalid object key"):
        S3ObjectStore(store_client, s3_bucket).put_file(source, key, sha256=sha)


def test_s3_missing_bucket_error_names_bucket_not_secret(
    store_client, services_env: dict[str, str], tmp_path: Path
) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    store = S3ObjectStore(store_client, "bq-no-such-bucket")
    secret = services_env["AWS_SECRET_ACCESS_KEY"]
    operations: list[Callable[[], object]] = [
        lambda: store.put_file(source, "io/a.tif", sha256=sha),
        lambda: store.stat("io/a.tif"),
        lambda: store.list_keys("io/"),
        lambda: store.delete("io/a.tif"),
    ]
    for operation in operations:
        with pytest.raises(StorageError) as caught:
            operation()
        assert "s3://bq-no-such-bucket/" in str(caught.value)
        assert "NoSuchBucket" in str(caught.value)
        assert secret not in error_chain_text(caught.value)


def test_s3_unreachable_endpoint_error(tmp_path: Path, services_env: dict[str, str]) -> None:
    secret = services_env["AWS_SECRET_ACCESS_KEY"]
    # Port 9 (discard) is closed on loopback: connection refused at once; one attempt only.
    client = s3_client("http://127.0.0.1:9", "us-east-1", "bq-local-test", secret, max_attempts=1)
    store = S3ObjectStore(client, "bq-io", retry=RetryPolicy(attempts=1))
    with pytest.raises(StorageError, match=r"s3://bq-io/io/a\.tif.*EndpointConnectionError") as e:
        store.stat("io/a.tif")
    assert secret not in error_chain_text(e.value)


def test_s3_missing_local_file(store_client, s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/io/a\.tif.*No such file"):
        S3ObjectStore(store_client, s3_bucket).put_file(
            tmp_path / "absent.tif", "io/a.tif", sha256="0" * 64
        )


def test_s3_client_retry_config(store_client) -> None:
    retries = store_client.meta.config.retries
    assert retries["mode"] == "standard"
    assert retries["total_max_attempts"] == 5


def test_s3_raster_opens_through_gdal(
    store_client, s3_bucket: str, tmp_path: Path, gdal_s3_env: dict[str, str]
) -> None:
    spec = RasterSpec(dtype="float32", crs="EPSG:32198", count=2, nodata=-9999.0)
    source = write_raster(tmp_path / "r.tif", spec)
    store = S3ObjectStore(store_client, s3_bucket)
    store.put_file(source, "io/col/r.tif", sha256=sha256_file(source))

    with rasterio_s3_env(gdal_s3_env), rasterio.open(store.gdal_path("io/col/r.tif")) as src:
        assert src.crs.to_epsg() == 32198
        np.testing.assert_array_equal(src.read(), raster_values(spec))


# ---------------------------------------------------------------------------------------------
# Streams, downloads, small reads (backups), on both stores


class FailingStream:
    """A stream whose producer dies after some bytes (a dump that fails half-way)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        if not self.data:
            raise RuntimeError("producer failed")
        chunk, self.data = self.data[: max(size, 1)], self.data[max(size, 1) :]
        return chunk


def piped(path: Path) -> subprocess.Popen[bytes]:
    """A real, non-seekable pipe yielding the file's bytes (as pg_dump's stdout would)."""
    return subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def any_store(request, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    client = request.getfixturevalue("store_client")
    # Public-read on: objects written with private=True must stay private anyway.
    return S3ObjectStore(
        client,
        bucket,
        public_read=True,
        multipart_threshold_bytes=5 * MIB,
        multipart_chunk_bytes=5 * MIB,
    )


def test_put_stream_from_a_pipe_records_the_checksum_beside(
    any_store: ObjectStore, tmp_path: Path
) -> None:
    source, sha = write_bytes(tmp_path / "dump.bin", os.urandom(6 * MIB + 123))
    process = piped(source)
    assert process.stdout is not None

    stored = any_store.put_stream(
        process.stdout, "backups/db/2026-01-02.dump", content_type="application/octet-stream"
    )
    process.wait()

    assert (stored.key, stored.size, stored.sha256) == (
        "backups/db/2026-01-02.dump",
        6 * MIB + 123,
        sha,
    )
    # What the store itself reports of the bytes it holds is what was expected of them (S3: a
    # composite of the 5 MiB parts' SHA-256s, which says nothing of the whole by itself).
    again = any_store.stat("backups/db/2026-01-02.dump")
    assert again is not None and again.checksum == stored.checksum != ""
    assert again.sha256 == (sha if isinstance(any_store, LocalObjectStore) else "")
    assert any_store.get_bytes("backups/db/2026-01-02.dump.sha256") == (
        f"{sha}  2026-01-02.dump\n".encode()
    )
    copy = any_store.download("backups/db/2026-01-02.dump", tmp_path / "copy" / "2026-01-02.dump")
    assert copy.read_bytes() == source.read_bytes()
    # What a user downloads by hand checks with the usual tool.
    (copy.parent / "2026-01-02.dump.sha256").write_bytes(
        any_store.get_bytes("backups/db/2026-01-02.dump.sha256") or b""
    )
    subprocess.run(["sha256sum", "--check", "--quiet", "2026-01-02.dump.sha256"], cwd=copy.parent)


def test_put_stream_failure_keeps_the_previous_object(
    any_store: ObjectStore, tmp_path: Path
) -> None:
    key = "backups/db/2026-01-02.dump"
    first = any_store.put_stream(io.BytesIO(b"good dump"), key, content_type="application/x")

    with pytest.raises(RuntimeError, match="producer failed"):
        any_store.put_stream(FailingStream(os.urandom(6 * MIB)), key, content_type="x")

    assert any_store.get_bytes(key) == b"good dump"
    assert stored_object(any_store, key).sha256 == first.sha256


def test_put_stream_failure_stores_nothing_new(any_store: ObjectStore) -> None:
    with pytest.raises(RuntimeError, match="producer failed"):
        any_store.put_stream(FailingStream(b"x" * 1000), "backups/db/a.dump", content_type="x")
    assert any_store.stat("backups/db/a.dump") is None
    assert any_store.list_keys("backups/") == []


def test_download_and_get_bytes_of_a_missing_object(any_store: ObjectStore, tmp_path: Path) -> None:
    assert any_store.get_bytes("backups/db/none.json") is None
    with pytest.raises(StorageError, match="no such object"):
        any_store.download("backups/db/none.dump", tmp_path / "none.dump")
    assert not (tmp_path / "none.dump").exists()


def test_delete_removes_the_streamed_checksum_too(any_store: ObjectStore) -> None:
    any_store.put_stream(io.BytesIO(b"dump"), "backups/db/a.dump", content_type="x")
    any_store.put_stream(io.BytesIO(b"other"), "backups/db/b.dump", content_type="x")

    any_store.delete("backups/db/a.dump")

    assert any_store.get_bytes("backups/db/a.dump.sha256") is None
    assert any_store.stat("backups/db/a.dump") is None
    assert any_store.stat("backups/db/b.dump") is not None


def anonymous_get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(("private", "status"), [(True, 403), (False, 200)])
def test_s3_put_stream_is_multipart_and_private_on_request(
    store_client,
    services_env: dict[str, str],
    s3_bucket: str,
    write_requests: list[str],
    private: bool,
    status: int,
) -> None:
    base_url = f"{services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}"
    store = S3ObjectStore(
        store_client,
        s3_bucket,
        base_url,
        public_read=True,
        multipart_threshold_bytes=5 * MIB,
        multipart_chunk_bytes=5 * MIB,
    )
    data = os.urandom(11 * MIB)
    acl_requested: list[str | None] = []

    def record_acl(params, **_: object) -> None:
        acl_requested.append(params.get("ACL"))

    store_client.meta.events.register("before-parameter-build.s3.CreateMultipartUpload", record_acl)
    try:
        stored = store.put_stream(
            io.BufferedReader(io.BytesIO(data)),
            "backups/db/a.dump",
            content_type="x",
            private=private,
        )
    finally:
        store_client.meta.events.unregister(
            "before-parameter-build.s3.CreateMultipartUpload", record_acl
        )

    assert write_requests.count("UploadPart") == 3
    assert "CreateMultipartUpload" in write_requests and "CompleteMultipartUpload" in write_requests
    assert store_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    # moto ignores the ACL of multipart uploads: check what was asked of S3 for the dump, and
    # who may read the checksum (a single PUT) as a browser would.
    assert acl_requested == [None if private else "public-read"]
    assert anonymous_get_status(stored.href + ".sha256") == status
    assert store.get_bytes("backups/db/a.dump") == data


def test_s3_failed_stream_leaves_no_multipart_upload(store_client, s3_bucket: str) -> None:
    store = S3ObjectStore(
        store_client, s3_bucket, multipart_threshold_bytes=5 * MIB, multipart_chunk_bytes=5 * MIB
    )
    with pytest.raises(RuntimeError, match="producer failed"):
        store.put_stream(FailingStream(os.urandom(12 * MIB)), "backups/db/a.dump", content_type="x")
    assert store_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


# ---------------------------------------------------------------------------------------------
# Owners: an object belongs to one item, which alone may replace it


A_OWNER = ObjectOwner("col-a", "item-a")
B_OWNER = ObjectOwner("col-b", "item-b")


def test_the_owner_is_recorded_and_another_item_is_refused(
    any_store: ObjectStore, tmp_path: Path
) -> None:
    first, sha1 = write_bytes(tmp_path / "a.tif", b"A" * 1000)
    second, sha2 = write_bytes(tmp_path / "b.tif", b"B" * 30)
    stored = any_store.put_file(first, "io/shared/x.tif", sha256=sha1, owner=A_OWNER)
    assert stored.owner == A_OWNER
    assert stored_object(any_store, "io/shared/x.tif").owner == A_OWNER

    # Another dataset's item computing the same key: refused, naming both, nothing uploaded,
    # whether its content differs or not.
    for path, sha in ((second, sha2), (first, sha1)):
        with pytest.raises(StorageError) as refused:
            any_store.put_file(path, "io/shared/x.tif", sha256=sha, owner=B_OWNER)
        assert "col-a/item-a" in str(refused.value) and "col-b/item-b" in str(refused.value)
        assert "nothing was uploaded" in str(refused.value)
    with pytest.raises(StorageError, match="names no item"):
        any_store.put_file(second, "io/shared/x.tif", sha256=sha2)
    kept = any_store.stat("io/shared/x.tif")
    assert kept is not None and (kept.size, kept.sha256, kept.owner) == (1000, sha1, A_OWNER)

    # Its own item replaces it.
    replaced = any_store.put_file(second, "io/shared/x.tif", sha256=sha2, owner=A_OWNER)
    assert replaced.uploaded
    assert stored_object(any_store, "io/shared/x.tif").sha256 == sha2


def test_an_object_without_owner_is_adopted_without_upload(
    any_store: ObjectStore, tmp_path: Path
) -> None:
    # Uploaded before owners were recorded: the same content gets its owner, not a new upload.
    source, sha = write_bytes(tmp_path / "a.tif", b"legacy" * 100)
    any_store.put_file(source, "io/col/a.tif", sha256=sha)
    assert stored_object(any_store, "io/col/a.tif").owner is None

    again = any_store.put_file(source, "io/col/a.tif", sha256=sha, owner=A_OWNER)

    assert again.uploaded is False and again.owner == A_OWNER
    adopted = any_store.stat("io/col/a.tif")
    assert adopted is not None and (adopted.sha256, adopted.owner) == (sha, A_OWNER)
    assert any_store.get_bytes("io/col/a.tif") == b"legacy" * 100
    with pytest.raises(StorageError, match="col-a/item-a"):
        any_store.record_owner("io/col/a.tif", B_OWNER)


def test_owner_names_survive_any_characters(any_store: ObjectStore, tmp_path: Path) -> None:
    owner = ObjectOwner("colección", "tas 01/../é%2F")
    assert ObjectOwner.decode(owner.encode()) == owner
    source, sha = write_bytes(tmp_path / "a.tif", b"x")
    any_store.put_file(source, "io/col/a.tif", sha256=sha, owner=owner)
    assert stored_object(any_store, "io/col/a.tif").owner == owner


def test_local_file_replaced_in_place_is_hashed_again(tmp_path: Path) -> None:
    # Overwritten by hand with garbage of the same size: the sidecar predates the file, so it
    # no longer vouches for it.
    source, sha = write_bytes(tmp_path / "a.tif", b"good content")
    store = LocalObjectStore(tmp_path / "store")
    store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER)
    target = tmp_path / "store" / "io" / "a.tif"
    time.sleep(0.05)  # past the filesystem's timestamp granularity
    target.write_bytes(b"bad content!")

    garbage = store.stat("io/a.tif")

    assert garbage is not None and garbage.size == len(b"good content")
    assert garbage.sha256 == sha256_file(target) != sha
    assert store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER).uploaded
    assert target.read_bytes() == b"good content"


def test_local_file_replaced_with_its_mtime_put_back_is_hashed_again(tmp_path: Path) -> None:
    # Garbage of the same size, the file's mtime restored (`touch -r`, `cp -p`): its ctime,
    # which no one can set, still says it changed after the sidecar was written.
    source, sha = write_bytes(tmp_path / "a.tif", b"good content")
    store = LocalObjectStore(tmp_path / "store")
    store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER)
    target = tmp_path / "store" / "io" / "a.tif"
    before = target.stat()
    target.write_bytes(b"bad content!")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))

    garbage = store.stat("io/a.tif")

    assert garbage is not None and garbage.sha256 == sha256_file(target) != sha
    assert stored_object(store, "io/a.tif").sha256 == garbage.sha256


def forge(client, bucket: str, key: str, body: bytes, **checksum: str) -> None:
    """Another client overwrites `key` with `body`, copying its x-amz-meta-* metadata (sha256,
    owner, what was expected of the bytes) and content type, as a forger would."""
    head = client.head_object(Bucket=bucket, Key=key)
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        Metadata=head["Metadata"],
        ContentType=head["ContentType"],
        **checksum,
    )
    assert client.head_object(Bucket=bucket, Key=key)["Metadata"] == head["Metadata"]


@pytest.mark.parametrize("single_put_max", [None, 5 * MIB], ids=["single-put", "multipart"])
@pytest.mark.parametrize(
    "forger_checksum", [{}, {"ChecksumAlgorithm": "SHA256"}], ids=["plain", "sha256"]
)
def test_s3_bytes_under_copied_metadata_are_not_vouched_for(
    store_client,
    s3_bucket: str,
    tmp_path: Path,
    single_put_max: int | None,
    forger_checksum: dict[str, str],
) -> None:
    data = os.urandom(6 * MIB)
    source, sha = write_bytes(tmp_path / "a.tif", data)
    store = S3ObjectStore(
        store_client,
        s3_bucket,
        multipart_chunk_bytes=5 * MIB,
        single_put_max_bytes=single_put_max or 5 * 1024**3,
    )
    store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER)
    assert stored_object(store, "io/a.tif").sha256 == sha

    forge(store_client, s3_bucket, "io/a.tif", os.urandom(len(data)), **forger_checksum)

    forged = store.stat("io/a.tif")
    assert forged is not None and (forged.size, forged.owner) == (len(data), A_OWNER)
    assert forged.sha256 != sha  # the store's own checksum says other bytes, or nothing
    # Asking the store for a checksum of its own finds the garbage's.
    computed = store.checksum_in_place("io/a.tif")
    assert computed is not None and computed.sha256 not in ("", sha)
    # The next upload of the item's file replaces the garbage, whatever the metadata says.
    assert store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER).uploaded
    assert store.get_bytes("io/a.tif") == data
    assert stored_object(store, "io/a.tif").sha256 == sha


def test_s3_object_without_a_checksum_gets_one_computed_by_the_store(
    store_client, s3_bucket: str, tmp_path: Path
) -> None:
    # Uploaded before uploads asked for checksums: its metadata alone vouches for nothing,
    # until S3 computes its own SHA-256 in a server-side copy (no bytes sent again).
    data = b"uploaded by an older version" * 100
    sha = hashlib.sha256(data).hexdigest()
    owner = {"bq-owner": A_OWNER.encode()}
    store_client.put_object(
        Bucket=s3_bucket, Key="io/old.tif", Body=data, Metadata={"sha256": sha, **owner}
    )
    store = S3ObjectStore(store_client, s3_bucket)
    assert stored_object(store, "io/old.tif").sha256 == ""

    computed = store.checksum_in_place("io/old.tif")

    assert computed is not None and (computed.sha256, computed.owner) == (sha, A_OWNER)
    assert store.get_bytes("io/old.tif") == data


def test_s3_store_without_checksums_vouches_by_the_etag_recorded_at_upload(
    store_client, services_env: dict[str, str], s3_bucket: str
) -> None:
    # A client that sends no checksum at all: S3 keeps none (a store without checksums looks
    # the same), and only the ETag, which S3 computes, can tie the bytes to the metadata.
    plain = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=services_env["BQ_S3_ENDPOINT_URL"],
        region_name=services_env["BQ_S3_REGION"],
        aws_access_key_id=services_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=services_env["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(request_checksum_calculation="when_required"),
    )
    data = b"bytes of a store without checksums" * 10
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    plain.put_object(
        Bucket=s3_bucket, Key="io/a.tif", Body=data, Metadata={"sha256": sha, "etag": md5}
    )
    store = S3ObjectStore(store_client, s3_bucket)
    head = plain.head_object(Bucket=s3_bucket, Key="io/a.tif", ChecksumMode="ENABLED")
    assert not [k for k in head if k.startswith("Checksum")]
    assert stored_object(store, "io/a.tif").sha256 == sha

    plain.put_object(
        Bucket=s3_bucket,
        Key="io/a.tif",
        Body=bytes(len(data)),
        Metadata={"sha256": sha, "etag": md5},
    )

    assert stored_object(store, "io/a.tif").sha256 == ""


def test_rewrite_uploads_the_same_bytes_again(any_store: ObjectStore, tmp_path: Path) -> None:
    source, sha = write_bytes(tmp_path / "a.tif", b"same bytes")
    any_store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER)
    assert not any_store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER).uploaded

    again = any_store.put_file(source, "io/a.tif", sha256=sha, owner=A_OWNER, rewrite=True)

    assert again.uploaded and stored_object(any_store, "io/a.tif").sha256 == sha
    with pytest.raises(StorageError, match="col-a/item-a"):
        any_store.put_file(source, "io/a.tif", sha256=sha, owner=B_OWNER, rewrite=True)


# ---------------------------------------------------------------------------------------------
# Outages: retried within a time budget, through the one client configuration


def test_production_and_tests_use_one_client_configuration(services_env) -> None:
    resource = S3ObjectStoreResource(
        bucket="bq-io",
        endpoint_url=services_env["BQ_S3_ENDPOINT_URL"],
        region_name=services_env["BQ_S3_REGION"],
    )
    store = resource.store()
    config = store.client.meta.config  # type: ignore[attr-defined]
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert (config.connect_timeout, config.read_timeout) == (5.0, 30.0)
    assert store.retry.budget_seconds is not None and store.retry.budget_seconds >= 60  # type: ignore[attr-defined]


def test_s3_outage_is_ridden_out(
    services_env, s3_bucket: str, tmp_path: Path, tcp_proxy_factory
) -> None:
    proxy = tcp_proxy_factory(int(services_env["BQ_S3_ENDPOINT_URL"].rsplit(":", 1)[1]))
    client = s3_client(
        proxy.url,
        services_env["BQ_S3_REGION"],
        services_env["AWS_ACCESS_KEY_ID"],
        services_env["AWS_SECRET_ACCESS_KEY"],
    )
    store = S3ObjectStore(
        client, s3_bucket, retry=RetryPolicy(attempts=100, backoff_seconds=0.2, budget_seconds=60)
    )
    source, sha = write_bytes(tmp_path / "a.tif", b"survives" * 1000)
    proxy.down()
    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(store.put_file, source, "io/a.tif", sha256=sha, owner=A_OWNER)
        while proxy.refused < 3:  # the store is retrying against a dead endpoint
            time.sleep(0.05)
        proxy.up()
        stored = upload.result()
    assert stored.uploaded
    assert store.stat("io/a.tif") == StoredObject(
        "io/a.tif", f"s3://{s3_bucket}/io/a.tif", 8000, sha, False, A_OWNER
    )


def test_s3_dead_endpoint_fails_in_one_budget_then_fast(services_env, tcp_proxy_factory) -> None:
    proxy = tcp_proxy_factory(int(services_env["BQ_S3_ENDPOINT_URL"].rsplit(":", 1)[1]))
    client = s3_client(
        proxy.url, "us-east-1", "bq-local-test", "bq-local-test-secret", max_attempts=1
    )
    store = S3ObjectStore(
        client, "bq-io", retry=RetryPolicy(attempts=100, backoff_seconds=0.05, budget_seconds=1)
    )
    proxy.down()
    with pytest.raises(StorageError, match=r"s3://bq-io/io/a\.tif"):
        store.stat("io/a.tif")
    spent = proxy.refused
    assert spent > 1  # retried within its budget
    # The endpoint stayed down for a whole budget: the next operations try once each.
    for _ in range(3):
        with pytest.raises(StorageError):
            store.stat("io/a.tif")
    assert proxy.refused == spent + 3
    # Back up: the first success ends the outage.
    proxy.up()
    assert store.stat("io/a.tif") is None
    assert not store.outage.ongoing
