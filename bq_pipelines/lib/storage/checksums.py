"""What S3 itself reports of an object's bytes, and what to expect of it from a file or a stream.

Metadata (`x-amz-meta-*`) is whatever a client wrote: copied onto other bytes, it vouches for
nothing. What a client cannot set is what the store computes from the bytes:
- the SHA-256 checksum (`ChecksumAlgorithm='SHA256'` at upload, read back with `ChecksumMode`):
  the whole object's for a single PUT; for a multipart upload, a *composite*: the SHA-256 of
  the parts' SHA-256s (S3 answers `<base64>-<parts>`, moto 5.2 the base64 alone);
- the ETag: the MD5 of a single PUT, `<md5 of the parts' MD5s>-<parts>` for a multipart upload,
  for a store that keeps no checksum.
A composite (or an ETag) says nothing of the whole object's SHA-256 by itself: the value
expected from the file is recorded in the metadata at upload, and only vouches for the
metadata's sha256 when the store reports exactly it for the bytes it holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bq_pipelines.lib.hashing import sha256_stream

# S3's largest single PUT: above, an upload must be multipart (its checksum a composite).
SINGLE_PUT_MAX_BYTES = 5 * 1024**3
READ_CHUNK_BYTES = 1024 * 1024
# Metadata recorded at upload beside `sha256`: what the store must report for these bytes.
COMPOSITE_METADATA = "sha256-composite"
ETAG_METADATA = "etag"


def base64_of(sha256_hex: str) -> str:
    """A hex digest as S3 writes checksums (base64 of the raw digest)."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def hex_of(checksum: str) -> str:
    """The hex digest of a base64 checksum, or "" when it is not one."""
    try:
        return base64.b64decode(checksum, validate=True).hex()
    except (binascii.Error, ValueError):
        return ""


class PartDigests:
    """SHA-256 and MD5 of a stream, whole and per part of `part_size` bytes, as it passes."""

    def __init__(self, part_size: int | None) -> None:
        self.part_size = part_size
        self.size = 0
        self._sha256 = sha256_stream()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._parts: list[tuple[bytes, bytes]] = []  # (sha256, md5) of each finished part
        self._part_sha256 = sha256_stream()
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._part_filled = 0

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        self._md5.update(data)
        self.size += len(data)
        offset = 0
        while self.part_size is not None and offset < len(data):
            take = min(len(data) - offset, self.part_size - self._part_filled)
            piece = data[offset : offset + take]
            self._part_sha256.update(piece)
            self._part_md5.update(piece)
            self._part_filled += take
            offset += take
            if self._part_filled == self.part_size:
                self._end_part()

    def _end_part(self) -> None:
        self._parts.append((self._part_sha256.digest(), self._part_md5.digest()))
        self._part_sha256 = sha256_stream()
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._part_filled = 0

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def expected(self, multipart: bool) -> ExpectedChecksums:
        """What the store reports once these bytes are uploaded, in one PUT or in parts."""
        if not multipart:
            return ExpectedChecksums(
                base64_of(self._sha256.hexdigest()), self._md5.hexdigest(), composite=False
            )
        parts = list(self._parts)
        if self._part_filled or not parts:
            parts.append((self._part_sha256.digest(), self._part_md5.digest()))
        composite = sha256_stream()
        composite.update(b"".join(sha for sha, _ in parts))
        md5s = hashlib.md5(b"".join(md5 for _, md5 in parts), usedforsecurity=False)
        return ExpectedChecksums(
            base64.b64encode(composite.digest()).decode("ascii"),
            f"{md5s.hexdigest()}-{len(parts)}",
            composite=True,
        )


@dataclass(frozen=True)
class ExpectedChecksums:
    """What the store computes for bytes uploaded one way: its SHA-256 checksum (base64, no
    part count) and its ETag."""

    sha256: str
    etag: str
    composite: bool

    def metadata(self) -> dict[str, str]:
        """Recorded beside the sha256 at upload (see the module docstring)."""
        if self.composite:
            return {COMPOSITE_METADATA: self.sha256, ETAG_METADATA: self.etag}
        return {ETAG_METADATA: self.etag}


def file_checksums(path: Path, part_size: int | None) -> tuple[str, ExpectedChecksums]:
    """The file's sha256 (hex) and what the store reports once it is uploaded in one PUT
    (`part_size` None) or in parts of `part_size` bytes. One read of the file."""
    digests = PartDigests(part_size)
    with path.open("rb") as stream:
        while chunk := stream.read(READ_CHUNK_BYTES):
            digests.update(chunk)
    return digests.sha256, digests.expected(part_size is not None)


@dataclass(frozen=True)
class Reported:
    """What a HEAD (with `ChecksumMode='ENABLED'`) says of the bytes the store holds."""

    sha256: str  # base64, without a part count; "" when the store reports no SHA-256
    composite: bool  # of a multipart upload: not the whole object's SHA-256
    etag: str
    any_checksum: bool  # some checksum (CRC32, SHA-256...): the store keeps checksums

    @classmethod
    def of(cls, head: Mapping[str, Any]) -> Reported:
        raw = str(head.get("ChecksumSHA256") or "")
        value, _, parts = raw.partition("-")
        etag = str(head.get("ETag") or "").strip('"')
        composite = bool(parts) or head.get("ChecksumType") == "COMPOSITE" or "-" in etag
        any_checksum = any(k.startswith("Checksum") and k != "ChecksumType" for k in head)
        return cls(value, composite, etag, any_checksum)

    def vouched_sha256(self, metadata: Mapping[str, str]) -> str:
        """The object's sha256 (hex) as far as the store vouches for it, or "":
        - a whole-object checksum is the sha256 itself;
        - a composite vouches for the metadata's sha256 when it is the one recorded at upload;
        - a store that keeps no checksum at all: the ETag recorded at upload, likewise."""
        if self.sha256 and not self.composite:
            return hex_of(self.sha256)
        recorded = metadata.get("sha256", "")
        if self.sha256:
            return recorded if metadata.get(COMPOSITE_METADATA) == self.sha256 else ""
        if not self.any_checksum and self.etag and metadata.get(ETAG_METADATA) == self.etag:
            return recorded
        return ""
