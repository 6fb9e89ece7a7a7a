"""Local files (plain paths and file:// URLs): read in place or copied into staging."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from bq_pipelines.lib.errors import SourceError
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.sources.common import (
    CHUNK_SIZE,
    FetchedFile,
    SourceFingerprint,
    _error,
    _iso,
    _StagedFile,
)


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return Path(url).expanduser()
    if parts.netloc not in ("", "localhost"):
        raise _error(url, f"file URL names a remote host {parts.netloc!r}")
    return Path(url2pathname(unquote(parts.path)))


def _same_file(source: Path, destination: Path) -> bool:
    try:
        return source.samefile(destination)
    except OSError:
        return False


def _file_fingerprint(url: str, path: Path) -> SourceFingerprint:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SourceError(str(path), "file not found", not_found=True) from None
    except OSError as error:
        raise SourceError(str(path), f"cannot stat: {error.strerror}") from error
    if not path.is_file():
        raise SourceError(str(path), "not a regular file")
    modified = _iso(datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC))
    return SourceFingerprint(redact_url(url), stat.st_size, None, modified)


def _file_fetch(url: str, source: Path, staged: _StagedFile) -> FetchedFile:
    fingerprint = _file_fingerprint(url, source)
    try:
        with source.open("rb") as stream:
            staged.write_all(iter(lambda: stream.read(CHUNK_SIZE), b""))
    except OSError as error:
        raise SourceError(str(source), f"cannot read: {error.strerror}") from error
    if staged.size != fingerprint.size:
        # Not retried: a local file changing under us is a producer still writing it.
        raise SourceError(str(source), "file changed while it was being copied")
    return staged.commit(url, fingerprint)


def _describe_in_place(url: str, path: Path) -> FetchedFile:
    fingerprint = _file_fingerprint(url, path)
    sha256 = sha256_file(path, CHUNK_SIZE)
    return FetchedFile(fingerprint.url, path, path.stat().st_size, sha256, fingerprint)
