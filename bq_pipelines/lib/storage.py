"""Object storage for COGs: one interface, a local-folder store (default) and an S3 store.

Keys follow the legacy layout `<prefix>/<collection folder>/<file name>`; an upload whose
sha256 is already stored under the same key is skipped. Streams (database dumps) are uploaded
as they are produced, their sha256 recorded beside them as `<key>.sha256`.

Every COG records the STAC item that owns it (collection + item id: S3 metadata `bq-owner`, a
`<file>.owner` sidecar on the local store); an upload refuses to replace an object owned by
another item, so two items (or datasets) that compute the same key cannot overwrite each other.

What a skip, the audit and a backup's verification trust is what the store itself vouches for,
never metadata a client could copy onto other bytes: S3's own SHA-256 checksum of the object
(uploads ask for one; `lib/s3_checksums.py`), or, on the local store, a sidecar written after
its file's last change (a file whose size, mtime or ctime changed since is hashed again).

S3 operations are retried within a total time budget (`STORE_RETRY`) on top of botocore's
standard retry mode, with short connect/read timeouts: an outage of a minute or two is ridden
out, a dead endpoint fails in one budget.

Hrefs (what STAC items point at):
- with a `base_url`, both stores give `<base_url>/<url-quoted key>`;
- without one, the local store gives the absolute file path (static catalogs on disk accept
  absolute paths, and pystac can relativise them when saving a self-contained catalog), and the
  S3 store gives `s3://<bucket>/<key>` (unambiguous whatever the endpoint; set a base URL for
  anything a browser must open).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import quote, unquote

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError as S3TransferRetriesExceededError
from s3transfer.utils import ChunksizeAdjuster

from bq_pipelines.lib.errors import StorageError
from bq_pipelines.lib.files import copy_atomically, write_atomically, write_text_atomically
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.retry import Outage, RetryPolicy, with_retries
from bq_pipelines.lib.s3_checksums import (
    SINGLE_PUT_MAX_BYTES,
    ExpectedChecksums,
    PartDigests,
    Reported,
    file_checksums,
)

logger = logging.getLogger(__name__)

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
MIB = 1024 * 1024
# S3 refuses multipart parts below 5 MiB (except the last one).
S3_MIN_PART_BYTES = 5 * MIB
DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MIB
DEFAULT_MULTIPART_CHUNK_BYTES = 16 * MIB
DEFAULT_MAX_ATTEMPTS = 5
# Short enough that a hung endpoint is noticed within the retry budget; a read timeout applies
# to each socket read, not to a whole transfer, so big uploads are not cut short.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
# Each S3 operation: attempts (each already retried by botocore) until 150 s have passed, so an
# outage of at least a minute is survived whatever the jitter.
STORE_RETRY = RetryPolicy(
    attempts=50, backoff_seconds=1.0, max_backoff_seconds=15.0, budget_seconds=150.0
)
SHA256_SUFFIX = ".sha256"
OWNER_SUFFIX = ".owner"
OWNER_METADATA = "bq-owner"
T = TypeVar("T")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------
# Keys


def _key_segments(field: str, value: str, *, allow_empty: bool, allow_slash: bool) -> list[str]:
    """The `/`-separated segments of one key part, rejecting anything that could escape a root."""
    if "\\" in value:
        raise StorageError(f"invalid object key {field}={value!r}: backslashes are not allowed")
    if _CONTROL_CHARS_RE.search(value):
        raise StorageError(f"invalid object key {field}={value!r}: control characters")
    stripped = value.strip("/")
    if not stripped:
        if allow_empty:
            return []
        raise StorageError(f"invalid object key {field}={value!r}: must not be empty")
    segments = stripped.split("/")
    if not allow_slash and len(segments) > 1:
        raise StorageError(f"invalid object key {field}={value!r}: must not contain '/'")
    for segment in segments:
        if segment == "" or segment.strip() == "":
            raise StorageError(f"invalid object key {field}={value!r}: empty path segment")
        if segment in (".", ".."):
            raise StorageError(f"invalid object key {field}={value!r}: '{segment}' segment")
    return segments


def object_key(prefix: str, folder: str, file_name: str) -> str:
    """`<prefix>/<folder>/<file_name>` without empty or duplicate slashes.

    `prefix` may be empty (no prefix); `prefix` and `folder` may hold several segments
    (`io/chelsa`); outer slashes are dropped. Raises StorageError naming the bad field for
    `..`/`.` segments, empty segments, backslashes or control characters.
    """
    segments = [
        *_key_segments("prefix", prefix, allow_empty=True, allow_slash=True),
        *_key_segments("folder", folder, allow_empty=False, allow_slash=True),
        *_key_segments("file_name", file_name, allow_empty=False, allow_slash=False),
    ]
    return "/".join(segments)


def validate_key(key: str) -> str:
    """`key` itself, if it is a clean relative key (the rules of `object_key`, outer slashes
    included: a key given whole must already be normalised)."""
    if key != key.strip("/"):
        raise StorageError(f"invalid object key key={key!r}: leading or trailing '/'")
    _key_segments("key", key, allow_empty=False, allow_slash=True)
    return key


def validate_sha256(sha256: str) -> str:
    if not _SHA256_RE.fullmatch(sha256):
        raise StorageError(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
    return sha256


def url_join(base_url: str, key: str) -> str:
    return f"{base_url.rstrip('/')}/{quote(key, safe='/')}"


# ---------------------------------------------------------------------------------------------
# Interface


class ByteStream(Protocol):
    """What `put_stream` reads: a file, a pipe, or any reader of bytes."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectOwner:
    """The STAC item an object belongs to: only that item may replace it. `writer` says who
    writes it when not a dataset's partition (the ingestion API: `API_WRITER`)."""

    collection: str
    item: str
    writer: str = ""

    def __str__(self) -> str:
        where = f"{self.collection}/{self.item}"
        return f"{where} (written by the {self.writer})" if self.writer else where

    def encode(self) -> str:
        """ASCII for S3 metadata and sidecars (ids may hold any character but `/`)."""
        parts = [self.collection, self.item, *([self.writer] if self.writer else [])]
        return "/".join(quote(part, safe="") for part in parts)

    @classmethod
    def decode(cls, text: str) -> ObjectOwner | None:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            return None
        return cls(*(unquote(part) for part in parts))


API_WRITER = "ingestion-api"


@dataclass(frozen=True)
class StoredObject:
    key: str
    href: str  # public href (base URL + key), what STAC items point at
    size: int
    # The content's sha256 as the store vouches for it (see the module docstring); "" when it
    # cannot (no checksum of its own, or one that does not match what was recorded at upload).
    sha256: str
    uploaded: bool  # False when skipped because the same checksum was already stored
    owner: ObjectOwner | None = None  # None: written before owners were recorded, or by hand
    # The store's own checksum of the bytes, as it reports it (S3: the base64 SHA-256, a
    # composite for a multipart upload; local: the sha256), compared with the one expected at
    # upload when `sha256` cannot be vouched for (a multipart dump).
    checksum: str = field(default="", compare=False)
    # What the store says identifies this version of the object: S3's ETag, a local file's
    # size and modification time. Recorded when an object is adopted (legacy objects carry no
    # sha256 of ours), compared by the next run's skip check.
    etag: str | None = field(default=None, compare=False)


def check_owner(where: str, existing: StoredObject | None, owner: ObjectOwner | None) -> None:
    """StorageError when `existing` belongs to another item than `owner` (nothing is written).

    An object with no recorded owner may be claimed: it predates owners, or was put by hand.
    """
    if existing is None or existing.owner is None or existing.owner == owner:
        return
    claimant = f"item {owner}" if owner is not None else "a writer that names no item"
    raise StorageError(
        f"refusing to overwrite {where}: it belongs to item {existing.owner}, and {claimant} "
        "would replace it. Two items compute the same object key: give them distinct "
        "`folder` or file names (nothing was uploaded)"
    )


def same_content(existing: StoredObject | None, size: int, sha256: str) -> bool:
    return existing is not None and existing.size == size and existing.sha256 == sha256


class ObjectStore(ABC):
    """Where COGs live. Implementations are idempotent: same file + key -> same object."""

    @abstractmethod
    def put_file(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        owner: ObjectOwner | None = None,
        content_type: str = COG_MEDIA_TYPE,
        rewrite: bool = False,
    ) -> StoredObject:
        """Store `path` under `key` unless an object with the same size and sha256 is already
        there (`rewrite`: whatever is there), recording `owner`. StorageError (nothing
        written) when the object under `key` belongs to another item (see `check_owner`)."""

    @abstractmethod
    def record_owner(self, key: str, owner: ObjectOwner) -> None:
        """Record `owner` on an existing object that has none (written before owners were)."""

    def checksum_in_place(self, key: str) -> StoredObject | None:
        """Have the store compute a checksum of its own for an object that has none it
        vouches for (written before checksums were asked for); the object as it then stands,
        or None when the store cannot (the local store always hashes: nothing to do)."""
        return None

    @abstractmethod
    def put_stream(
        self, stream: ByteStream, key: str, *, content_type: str, private: bool = False
    ) -> StoredObject:
        """Store what `stream` yields until EOF under `key`, read in chunks (never whole in
        memory) and hashed on the way; the sha256 is recorded beside it as `<key>.sha256`
        (`sha256sum` format). For data whose size and checksum are known only at the end
        (database dumps). If reading `stream` raises, nothing new is stored under `key`.
        `private` refuses the store's public-read setting for this object."""

    @abstractmethod
    def download(self, key: str, path: Path) -> Path:
        """Copy the object to `path`, atomically (ranged GETs on S3); StorageError if missing."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """A small object's content (a manifest, a checksum file), or None when missing."""

    @abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The stored object (with its recorded sha256 and owner) or None."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with `prefix` (a string prefix, as in S3), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` (and its checksum); no error when it does not exist."""

    @abstractmethod
    def href(self, key: str) -> str:
        """Public href of `key`."""

    @abstractmethod
    def gdal_path(self, key: str) -> str:
        """A path rasterio/GDAL can open (local path or /vsis3/...)."""


# ---------------------------------------------------------------------------------------------
# Local folder


class LocalObjectStore(ObjectStore):
    """Files under `root/<key>`, each with a `<file>.sha256` sidecar in `sha256sum` format and,
    for COGs, a `<file>.owner` sidecar (`<collection>/<item>`, percent-encoded).

    The sidecar makes `stat` cheap and lets `sha256sum -c` verify a copied tree. It is given
    its file's mtime when written, after the file's last change: a file written, truncated,
    touched or chmod-ed since (its mtime differs, or its ctime, which no one can set, is newer
    than the sidecar's) is hashed again, whatever the sidecar says. Content types are not
    stored (a filesystem has none); the file extension carries it.
    """

    def __init__(self, root: Path, base_url: str | None = None) -> None:
        self.root = Path(root).absolute()
        self.base_url = base_url

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SHA256_SUFFIX)

    @staticmethod
    def _owner_sidecar(path: Path) -> Path:
        return path.with_name(path.name + OWNER_SUFFIX)

    def _recorded_sha256(self, path: Path) -> str | None:
        sidecar = self._sidecar(path)
        try:
            text = sidecar.read_text()
            if not _describes(sidecar.stat(), path.stat()):
                return None
        except FileNotFoundError:
            return None
        recorded = text.split(maxsplit=1)[0] if text.strip() else ""
        return recorded if _SHA256_RE.fullmatch(recorded) else None

    def _record_sha256(self, path: Path, sha256: str, hashed: os.stat_result | None = None) -> None:
        """Write the sidecar of `path`, whose content hashes to `sha256` (`hashed`: the file's
        stat taken before it was hashed; a file changed since gets no sidecar)."""
        sidecar = self._sidecar(path)
        written = hashed or path.stat()
        write_text_atomically(sidecar, sha256_line(sha256, path.name), _TEMP_PREFIX)
        # The sidecar describes the file as it stands now: same mtime, and a ctime (set by
        # this utime) no older than the file's.
        os.utime(sidecar, ns=(written.st_atime_ns, written.st_mtime_ns))
        now = path.stat()
        if (now.st_mtime_ns, now.st_ctime_ns) != (written.st_mtime_ns, written.st_ctime_ns):
            sidecar.unlink(missing_ok=True)  # changed while it was hashed: hash it next time

    def _recorded_owner(self, path: Path) -> ObjectOwner | None:
        try:
            return ObjectOwner.decode(self._owner_sidecar(path).read_text())
        except FileNotFoundError:
            return None

    def _write_owner(self, path: Path, owner: ObjectOwner) -> None:
        write_text_atomically(self._owner_sidecar(path), owner.encode() + "\n", _TEMP_PREFIX)

    def put_file(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        owner: ObjectOwner | None = None,
        content_type: str = COG_MEDIA_TYPE,
        rewrite: bool = False,
    ) -> StoredObject:
        validate_sha256(sha256)
        dest = self._path(key)
        existing = self.stat(key)
        check_owner(str(dest), existing, owner)
        try:
            size = path.stat().st_size
            if not rewrite and existing is not None and same_content(existing, size, sha256):
                logger.debug("skip %s: same sha256 already stored", dest)
                if owner is not None and existing.owner is None:
                    self._write_owner(dest, owner)
                return StoredObject(key, self.href(key), size, sha256, False, owner)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Drop the old checksum first: a crash between the two writes must not leave a
            # sidecar that vouches for content it does not describe.
            self._sidecar(dest).unlink(missing_ok=True)
            copy_atomically(path, dest, _TEMP_PREFIX)
            self._record_sha256(dest, sha256)
            if owner is not None:
                self._write_owner(dest, owner)
        except OSError as exc:
            raise StorageError(f"cannot store {path} as {dest}: {exc.strerror or exc}") from exc
        logger.info("stored %s (%d bytes)", dest, size)
        return StoredObject(key, self.href(key), size, sha256, True, owner, sha256)

    def record_owner(self, key: str, owner: ObjectOwner) -> None:
        path = self._path(key)
        existing = self.stat(key)
        if existing is None:
            raise StorageError(f"cannot record the owner of {path}: no such object")
        check_owner(str(path), existing, owner)
        try:
            self._write_owner(path, owner)
        except OSError as exc:
            raise StorageError(f"cannot record the owner of {path}: {exc.strerror or exc}") from exc

    def put_stream(
        self, stream: ByteStream, key: str, *, content_type: str, private: bool = False
    ) -> StoredObject:
        dest = self._path(key)
        reader = _HashingReader(stream)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._sidecar(dest).unlink(missing_ok=True)  # see put_file
            write_atomically(
                dest, lambda handle: shutil.copyfileobj(reader, handle, MIB), _TEMP_PREFIX
            )
            self._record_sha256(dest, reader.sha256)
        except OSError as exc:
            raise StorageError(f"cannot store a stream as {dest}: {exc.strerror or exc}") from exc
        logger.info("stored %s (%d bytes)", dest, reader.size)
        return StoredObject(
            key, self.href(key), reader.size, reader.sha256, True, checksum=reader.sha256
        )

    def download(self, key: str, path: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"cannot download {source}: no such object")
        try:
            copy_atomically(source, path)
        except OSError as exc:
            raise StorageError(f"cannot copy {source} to {path}: {exc.strerror or exc}") from exc
        return path

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def stat(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            before = path.stat()
            size = before.st_size
            sha256 = self._recorded_sha256(path)
            if sha256 is None:
                # Changed since its sidecar was written, written by hand, or interrupted before
                # its sidecar: hash it and record it.
                sha256 = sha256_file(path)
                self._record_sha256(path, sha256, before)
            owner = self._recorded_owner(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc.strerror or exc}") from exc
        etag = f"{size}-{before.st_mtime_ns}"
        return StoredObject(key, self.href(key), size, sha256, False, owner, sha256, etag)

    def list_keys(self, prefix: str) -> list[str]:
        # A prefix with `..` would walk outside root.
        _key_segments("prefix", prefix, allow_empty=True, allow_slash=True)
        # Walk only the deepest folder the prefix names, then filter as a string prefix.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            if not path.is_file() or path.name.endswith(_SIDECAR_SUFFIXES) or _is_temp(path):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            self._sidecar(path).unlink(missing_ok=True)
            self._owner_sidecar(path).unlink(missing_ok=True)
            _remove_empty_parents(path.parent, self.root)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from exc

    def href(self, key: str) -> str:
        if self.base_url:
            return url_join(self.base_url, validate_key(key))
        return str(self._path(key))

    def gdal_path(self, key: str) -> str:
        return str(self._path(key))


_TEMP_PREFIX = ".bq-tmp-"
_SIDECAR_SUFFIXES = (SHA256_SUFFIX, OWNER_SUFFIX)


class _HashingReader:
    """A file-like reader that hashes and counts what passes through it (per part of
    `part_size` bytes too: what S3 computes of a multipart upload)."""

    def __init__(self, stream: ByteStream, part_size: int | None = None) -> None:
        self._stream = stream
        self.digests = PartDigests(part_size)

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self.digests.update(chunk)
        return chunk

    @property
    def size(self) -> int:
        return self.digests.size

    @property
    def sha256(self) -> str:
        return self.digests.sha256


def sha256_line(sha256: str, key: str) -> str:
    """The `sha256sum` line recorded beside an object (checkable with `sha256sum -c`)."""
    return f"{sha256}  {key.rsplit('/', 1)[-1]}\n"


def _describes(sidecar: os.stat_result, file: os.stat_result) -> bool:
    """Whether a checksum sidecar was written after its file's last change (see
    LocalObjectStore)."""
    return sidecar.st_mtime_ns == file.st_mtime_ns and file.st_ctime_ns <= sidecar.st_ctime_ns


def _is_temp(path: Path) -> bool:
    return path.name.startswith(_TEMP_PREFIX)


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop climbing
            return
        folder = folder.parent


# ---------------------------------------------------------------------------------------------
# S3


def s3_client(
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
) -> BaseClient:
    """The one S3 client configuration of the project (production resources and tests alike):
    botocore's standard retry mode (backoff on throttling, 5xx, connection errors) and short
    connect/read timeouts. `S3ObjectStore` adds a total time budget on top.

    `max_attempts` counts every attempt, the first included (botocore's `total_max_attempts`).

    Keys left None use boto3's credential chain (environment, profile, instance role).
    A custom endpoint (moto, MinIO...) gets path-style addressing: its hostname has no
    per-bucket DNS.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def _s3_reason(exc: Exception) -> str:
    """What S3 said, without request details: ClientError carries code + message only."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        message = error.get("Message") or exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", ""
        )
        return f"{code}: {message}"
    if isinstance(exc, Boto3Error) and isinstance(exc.__context__, ClientError):
        return _s3_reason(exc.__context__)
    return f"{type(exc).__name__}: {exc}"


_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)


def is_transient_s3_error(exc: BaseException) -> bool:
    """Worth another attempt: no connection, a timeout, 5xx, throttling (also when s3transfer
    wrapped it)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in _TRANSIENT_CODES
    if isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, (Boto3Error, S3TransferRetriesExceededError)):
        cause = exc.__cause__ or exc.__context__
        return cause is not None and is_transient_s3_error(cause)
    return False


def _is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # head_object has no body: a missing key is a bare 404 (code "404"), but a missing bucket
    # is a 404 too; only the former means "no such object".
    return error.get("Code") in ("404", "NoSuchKey", "NotFound") and status == 404


class S3ObjectStore(ObjectStore):
    """Objects in one bucket; keys are used as given (the prefix is part of each key).

    Every upload asks S3 for its SHA-256 checksum; `stat` (one HEAD, `ChecksumMode` on) gives
    the sha256 S3 vouches for, never the metadata's alone (`lib/s3_checksums.py`). The owner
    and the sha256 are metadata (`x-amz-meta-bq-owner`, `x-amz-meta-sha256`). Every request is
    retried by the client (see `s3_client`), and each operation again within `retry`'s time
    budget; after one operation spent its whole budget, the next ones try once until one
    succeeds (`Outage`). A file is one PUT up to `single_put_max_bytes` (S3's 5 GiB: its
    checksum is then the whole file's), multipart above; a stream is multipart above
    `multipart_threshold_bytes`.
    """

    def __init__(
        self,
        client: BaseClient,
        bucket: str,
        base_url: str | None = None,
        *,
        public_read: bool = False,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        multipart_chunk_bytes: int = DEFAULT_MULTIPART_CHUNK_BYTES,
        single_put_max_bytes: int = SINGLE_PUT_MAX_BYTES,
        retry: RetryPolicy = STORE_RETRY,
    ) -> None:
        if multipart_chunk_bytes < S3_MIN_PART_BYTES:
            raise StorageError(
                f"multipart_chunk_bytes={multipart_chunk_bytes}: S3 parts must be at least "
                f"{S3_MIN_PART_BYTES} bytes"
            )
        self.client = client
        self.bucket = bucket
        self.base_url = base_url
        self.public_read = public_read
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
        )
        self.single_put_max_bytes = min(single_put_max_bytes, SINGLE_PUT_MAX_BYTES)
        self.retry = retry
        self.outage = Outage()

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        return StorageError(f"S3 {action} s3://{self.bucket}/{key} failed: {_s3_reason(exc)}")

    def _retrying(self, action: str, key: str, operation: Callable[[], T]) -> T:
        """`operation` retried on transient errors within the budget; errors propagate as is."""
        return with_retries(
            operation,
            policy=self.retry,
            is_transient=is_transient_s3_error,
            describe=f"S3 {action} s3://{self.bucket}/{key}",
            outage=self.outage,
        )

    def _metadata(
        self, sha256: str, owner: ObjectOwner | None, expected: ExpectedChecksums
    ) -> dict[str, str]:
        metadata = {"sha256": sha256, **expected.metadata()}
        if owner is not None:
            metadata[OWNER_METADATA] = owner.encode()
        return metadata

    def _part_size(self, size: int) -> int | None:
        """The part size of a file's upload (boto3's, adjusted to S3's part count), or None
        for one PUT."""
        if size <= self.single_put_max_bytes:
            return None
        chunk: int = self.transfer_config.multipart_chunksize
        adjusted: int = ChunksizeAdjuster().adjust_chunksize(chunk, size)
        return adjusted

    def _file_transfer(self, part_size: int | None) -> TransferConfig:
        if part_size is None:
            return TransferConfig(multipart_threshold=SINGLE_PUT_MAX_BYTES + 1)
        return TransferConfig(multipart_threshold=1, multipart_chunksize=part_size)

    def put_file(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        owner: ObjectOwner | None = None,
        content_type: str = COG_MEDIA_TYPE,
        rewrite: bool = False,
    ) -> StoredObject:
        validate_key(key)
        validate_sha256(sha256)
        where = f"s3://{self.bucket}/{key}"
        existing = self.stat(key)
        check_owner(where, existing, owner)
        try:
            size = path.stat().st_size
            if not rewrite and existing is not None and same_content(existing, size, sha256):
                logger.debug("skip %s: the store vouches for the same sha256", where)
                if owner is not None and existing.owner is None:
                    self._replace_metadata(key, owner, content_type)
                owner = owner or existing.owner
                return StoredObject(
                    key, existing.href, size, sha256, False, owner, existing.checksum
                )
            part_size = self._part_size(size)
            # What S3 must report for these bytes, recorded with them (one read of the file).
            actual, expected = file_checksums(path, part_size)
        except OSError as exc:
            raise StorageError(
                f"S3 upload of {path} to {where} failed: {exc.strerror or exc}"
            ) from exc
        if actual != sha256:
            raise StorageError(
                f"S3 upload of {path} to {where}: the file's sha256 is {actual}, not {sha256} "
                "(changed since it was hashed); nothing was uploaded"
            )
        self._upload_file(
            path, key, self._metadata(sha256, owner, expected), content_type, part_size
        )
        stored = self.stat(key)
        if stored is None or stored.sha256 != sha256:
            raise StorageError(
                f"S3 upload of {path} to {where}: the store reports "
                f"{'no object' if stored is None else repr(stored.checksum or 'no checksum')} "
                f"for it, not {expected.sha256!r} (sha256 {sha256})"
            )
        logger.info("uploaded %s (%d bytes)", where, size)
        return StoredObject(key, self.href(key), size, sha256, True, owner, stored.checksum)

    def _upload_file(
        self,
        path: Path,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        part_size: int | None,
    ) -> None:
        extra_args: dict[str, Any] = {
            "ContentType": content_type,
            "Metadata": metadata,
            # S3 computes it (and checks the one botocore sends): what `stat` trusts.
            "ChecksumAlgorithm": "SHA256",
        }
        if self.public_read:
            extra_args["ACL"] = "public-read"
        config = self._file_transfer(part_size)
        try:
            self._retrying(
                "upload",
                key,
                lambda: self.client.upload_file(
                    str(path), self.bucket, key, ExtraArgs=extra_args, Config=config
                ),
            )
        except OSError as exc:
            raise StorageError(
                f"S3 upload of {path} to s3://{self.bucket}/{key} failed: {exc.strerror or exc}"
            ) from exc
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("upload", key, exc) from exc

    def _replace_metadata(self, key: str, owner: ObjectOwner, content_type: str) -> None:
        """Record `owner` on an object the store vouches for: a server-side copy onto itself,
        in which S3 computes the SHA-256 of the bytes it holds (one request, up to 5 GiB)."""
        existing = self.stat(key)
        if existing is None or not existing.sha256 or existing.size > SINGLE_PUT_MAX_BYTES:
            why = (
                "is over 5 GiB" if existing and existing.sha256 else "has no sha256 S3 vouches for"
            )
            raise StorageError(
                f"S3 owner update of s3://{self.bucket}/{key}: the object {why}, so it cannot "
                "be copied onto itself (re-run with --force to upload it again)"
            )
        self._copy_in_place(
            key, {"sha256": existing.sha256, OWNER_METADATA: owner.encode()}, content_type
        )

    def _copy_in_place(self, key: str, metadata: dict[str, str], content_type: str) -> None:
        extra_args: dict[str, Any] = {
            "ContentType": content_type,
            "Metadata": metadata,
            "MetadataDirective": "REPLACE",
            "ChecksumAlgorithm": "SHA256",
        }
        if self.public_read:
            extra_args["ACL"] = "public-read"  # a copy gets the default ACL otherwise
        source = {"Bucket": self.bucket, "Key": key}
        try:
            self._retrying(
                "copy",
                key,
                lambda: self.client.copy_object(
                    CopySource=source, Bucket=self.bucket, Key=key, **extra_args
                ),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("copy in place of", key, exc) from exc

    def record_owner(self, key: str, owner: ObjectOwner) -> None:
        existing = self.stat(key)
        if existing is None:
            raise StorageError(f"S3 owner update of s3://{self.bucket}/{key}: no such object")
        check_owner(f"s3://{self.bucket}/{key}", existing, owner)
        if existing.owner != owner:
            self._replace_metadata(key, owner, COG_MEDIA_TYPE)

    def checksum_in_place(self, key: str) -> StoredObject | None:
        """A server-side copy of the object onto itself, with its metadata, in which S3
        computes the SHA-256 of the bytes it holds (objects up to 5 GiB)."""
        head = self._head(key)
        if head is None or head["ContentLength"] > SINGLE_PUT_MAX_BYTES:
            return None
        metadata = dict(head.get("Metadata", {}))
        content_type = str(head.get("ContentType") or COG_MEDIA_TYPE)
        logger.info("s3://%s/%s: asking S3 for a checksum of its own", self.bucket, key)
        self._copy_in_place(key, metadata, content_type)
        return self.stat(key)

    def stat(self, key: str) -> StoredObject | None:
        head = self._head(key)
        if head is None:
            return None
        metadata = head.get("Metadata", {})
        reported = Reported.of(head)
        owner = ObjectOwner.decode(metadata.get(OWNER_METADATA, ""))
        return StoredObject(
            key,
            self.href(key),
            head["ContentLength"],
            reported.vouched_sha256(metadata),
            False,
            owner,
            reported.sha256,
            str(head.get("ETag", "")).strip('"') or None,
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        """HeadObject with the store's checksums, or None when there is no such object."""
        validate_key(key)
        try:
            head: dict[str, Any] = self._retrying(
                "head",
                key,
                lambda: self.client.head_object(
                    Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
                ),
            )
        except ClientError as exc:
            if not _is_not_found(exc):
                raise self._error("head", key, exc) from exc
            if not self._bucket_exists():
                raise StorageError(
                    f"S3 head s3://{self.bucket}/{key} failed: NoSuchBucket: bucket "
                    f"{self.bucket!r} does not exist (check the bucket name and endpoint)"
                ) from exc
            return None
        except BotoCoreError as exc:
            raise self._error("head", key, exc) from exc
        return head

    def put_stream(
        self, stream: ByteStream, key: str, *, content_type: str, private: bool = False
    ) -> StoredObject:
        validate_key(key)
        sidecar = key + SHA256_SUFFIX
        # Parts as boto3 cuts a stream: what S3's composite checksum is made of.
        reader = _HashingReader(stream, self.transfer_config.multipart_chunksize)
        acl = {"ACL": "public-read"} if self.public_read and not private else {}
        try:
            # The old checksum stays until the new one replaces it: a failed stream keeps the
            # previous object whole, and a crash in between leaves a checksum that mismatches
            # (a reader refuses the object) rather than one that vouches for it.
            # Multipart above the threshold; s3transfer reads a non-seekable stream chunk by
            # chunk, so memory holds a few parts, never the whole object. A reader that raises
            # aborts the upload: S3 then keeps no object (or the previous one) under `key`.
            self.client.upload_fileobj(
                reader,
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type, "ChecksumAlgorithm": "SHA256", **acl},
                Config=self.transfer_config,
            )
            self._retrying(
                "upload",
                sidecar,
                lambda: self.client.put_object(
                    Bucket=self.bucket,
                    Key=sidecar,
                    Body=sha256_line(reader.sha256, key).encode("ascii"),
                    ContentType="text/plain",
                    **acl,
                ),
            )
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("upload", key, exc) from exc
        logger.info("uploaded s3://%s/%s (%d bytes)", self.bucket, key, reader.size)
        # boto3 reads a stream in parts only from the threshold on.
        multipart = reader.size >= self.transfer_config.multipart_threshold
        expected = reader.digests.expected(multipart)
        return StoredObject(
            key, self.href(key), reader.size, reader.sha256, True, checksum=expected.sha256
        )

    def download(self, key: str, path: Path) -> Path:
        validate_key(key)

        def fetch(handle: BinaryIO) -> None:
            self.client.download_fileobj(self.bucket, key, handle, Config=self.transfer_config)

        try:
            self._retrying("download", key, lambda: write_atomically(path, fetch))
        except ClientError as exc:
            if _is_not_found(exc):
                raise StorageError(
                    f"S3 download s3://{self.bucket}/{key} failed: no such object"
                ) from exc
            raise self._error("download", key, exc) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._error("download", key, exc) from exc
        return path

    def get_bytes(self, key: str) -> bytes | None:
        validate_key(key)
        try:
            body: bytes = self._retrying(
                "get",
                key,
                lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
            )
            return body
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise self._error("get", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("get", key, exc) from exc

    def _bucket_exists(self) -> bool:
        """Tells "no such key" from "no such bucket" after a body-less 404 on HEAD."""
        try:
            self._retrying("head bucket", "", lambda: self.client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise self._error("head bucket", "", exc) from exc
        except BotoCoreError as exc:
            raise self._error("head bucket", "", exc) from exc
        return True

    def list_keys(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

        try:
            return sorted(self._retrying("list", f"{prefix}*", listing))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", f"{prefix}*", exc) from exc

    def delete(self, key: str) -> None:
        validate_key(key)
        objects = [{"Key": key}, {"Key": key + SHA256_SUFFIX}]  # put_stream's checksum too
        try:
            response = self._retrying(
                "delete",
                key,
                lambda: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                ),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", key, exc) from exc
        if response.get("Errors"):
            error = response["Errors"][0]
            raise StorageError(
                f"S3 delete s3://{self.bucket}/{error.get('Key')} failed: "
                f"{error.get('Code')}: {error.get('Message')}"
            )

    def href(self, key: str) -> str:
        validate_key(key)
        if self.base_url:
            return url_join(self.base_url, key)
        return f"s3://{self.bucket}/{key}"

    def gdal_path(self, key: str) -> str:
        return f"/vsis3/{self.bucket}/{validate_key(key)}"
