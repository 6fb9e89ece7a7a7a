"""sha256, the one digest of the project: of files, of bytes and text, of JSON payloads, and
running digests for what is hashed while it streams (downloads, uploads, id listings)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

CHUNK_BYTES = 1024 * 1024


class Digest(Protocol):
    """A running sha256 (what `sha256_stream` returns)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...

    def digest(self) -> bytes: ...


def sha256_stream() -> Digest:
    """An empty running sha256: `update` it with each chunk, then read `hexdigest()`."""
    return hashlib.sha256()


def sha256_bytes(data: bytes | str) -> str:
    """Hex sha256 of bytes (text is hashed as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256_json(payload: Any) -> str:
    """Hex sha256 of `payload` as canonical JSON (sorted keys; `str` for anything else)."""
    return sha256_bytes(json.dumps(payload, sort_keys=True, default=str))


def sha256_file(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks (a multi-GB cube is never read at once)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
