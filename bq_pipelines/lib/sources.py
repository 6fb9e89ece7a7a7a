"""Fetch a remote or local file into a staging folder: streamed, atomic, checksummed, retried.

Supported URLs: http(s)://, ftp://, file:// (or a plain path) and s3://bucket/key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bq_pipelines.lib.retry import RetryPolicy


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies one version of an upstream file, without downloading it."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    def token(self) -> str:
        """A stable string that changes whenever the upstream file changes."""
        raise NotImplementedError


@dataclass(frozen=True)
class FetchedFile:
    """A file fully written into the staging folder."""

    url: str
    path: Path
    size: int
    sha256: str
    fingerprint: SourceFingerprint


def probe(url: str, *, retry: RetryPolicy = RetryPolicy(), timeout: float = 30.0,
          s3_endpoint_url: str | None = None) -> SourceFingerprint:
    """HEAD/stat `url` (no body download). Raises SourceError (TransientSourceError if retriable)."""
    raise NotImplementedError


def fetch(url: str, staging_dir: Path, *, file_name: str | None = None,
          retry: RetryPolicy = RetryPolicy(), timeout: float = 60.0,
          s3_endpoint_url: str | None = None) -> FetchedFile:
    """Download `url` into `staging_dir/<file_name or URL basename>`.

    Streams to a temporary file in the same folder, verifies the size announced by the server,
    computes sha256 while streaming, then renames atomically. Retries transient errors with
    backoff; a 404, permission or TLS failure raises SourceError naming the URL at once.
    """
    raise NotImplementedError
