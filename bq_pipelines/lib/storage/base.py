"""What every object store is: the `ObjectStore` interface, the objects it holds and who owns
them (see the package docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

from bq_pipelines.lib.errors import StorageError
from bq_pipelines.lib.storage.checksums import PartDigests

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
MIB = 1024 * 1024
SHA256_SUFFIX = ".sha256"
OWNER_SUFFIX = ".owner"
OWNER_METADATA = "bq-owner"


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


class HashingReader:
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
