"""What every source backend shares: fingerprints, limits, errors, retries, and the staged
file a download is written to (hashed on the way, renamed into place when complete)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

from bq_pipelines.lib.errors import SourceError, SourceRefused, TransientSourceError
from bq_pipelines.lib.hashing import sha256_stream
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import RetryPolicy, with_retries

T = TypeVar("T")
logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
DEFAULT_RETRY = RetryPolicy()
SIDECAR_SUFFIX = ".fingerprint"


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies one version of an upstream file, without downloading it.

    `url` is the source URL without userinfo; `last_modified` is the source's own text (HTTP date,
    or ISO 8601 UTC for FTP, files and S3).
    """

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    def token(self) -> str:
        """A stable string that changes whenever the upstream file changes."""
        etag, modified = self.etag or "", self.last_modified or ""
        return f"{self.url}|etag={etag}|modified={modified}|size={self.size}"

    @property
    def has_validator(self) -> bool:
        """Whether the source says *which version* this is (not only how big it is)."""
        return bool(self.etag or self.last_modified)


@dataclass(frozen=True)
class FetchedFile:
    """A file fully written into the staging folder (`url` is without userinfo)."""

    url: str
    path: Path
    size: int
    sha256: str
    fingerprint: SourceFingerprint


class UrlGuard(Protocol):
    """Where a fetch may go: the caller's policy (see lib/url_policy.py)."""

    def check_url(self, url: str) -> None:
        """Raise SourceRefused unless `url` (the first URL or a redirect's target) is allowed."""

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` a connection may use, resolved once (the connection is
        pinned to them); raise SourceRefused when none is allowed."""

    def resolves(self, url: str) -> bool:
        """Whether `check_url(url)` may block on DNS (an event loop then runs it in a thread)."""


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on fetching and converting sources: a dataset's (BQ_MAX_*), or the ingestion
    API's for URLs someone else chose (BQ_API_*); without them a fetch trusts its URL."""

    guard: UrlGuard | None = None  # with a guard, local files are fetched through it too
    max_bytes: int | None = None  # of one download (files read in place are not downloaded)
    max_seconds: float | None = None  # wall time of the whole fetch, retries included
    # Inspects the downloaded file (URL without userinfo, path) before it is renamed into
    # place; raises SourceRefused.
    check_file: Callable[[str, Path], None] | None = None
    # Width x height x bands read of one converted raster, checked from its header before any
    # conversion (lib/pipeline/, lib/cog/); SourceRefused beyond.
    max_pixels: int | None = None
    # Local files (file:// URLs, plain paths) must lie under it once symlinks are resolved;
    # None: not confined (a guard, the ingestion API's, refuses them anyway).
    local_root: Path | None = None
    # Refusals name the setting of the limit: `<prefix>MAX_DOWNLOAD_BYTES`, `<prefix>MAX_PIXELS`.
    settings_prefix: str | None = None

    def setting(self, name: str) -> str:
        """` (<prefix><name>)` for a refusal's message, or nothing."""
        return f" ({self.settings_prefix}{name})" if self.settings_prefix else ""

    def setting_name(self, name: str) -> str:
        """`<prefix><name>`, or a description when the limits name no settings."""
        return f"{self.settings_prefix}{name}" if self.settings_prefix else "the data root"


class _Budget:
    """The limits of one fetch, with its deadline."""

    def __init__(self, url: str, limits: FetchLimits) -> None:
        self.url = url
        self.limits = limits
        self.deadline = (
            None if limits.max_seconds is None else time.monotonic() + limits.max_seconds
        )

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SourceRefused(
                redact_url(self.url), f"not downloaded within {self.limits.max_seconds:g} s"
            )

    def check_size(self, size: int | None) -> None:
        limit = self.limits.max_bytes
        if size is not None and limit is not None and size > limit:
            raise SourceRefused(
                redact_url(self.url),
                f"larger than the download limit of {limit} bytes"
                + self.limits.setting("MAX_DOWNLOAD_BYTES"),
            )

    def timeout(self, timeout: float) -> float:
        return min(timeout, self.limits.max_seconds or timeout)


def _guard_url(url: str, limits: FetchLimits | None) -> None:
    if limits is not None and limits.guard is not None:
        limits.guard.check_url(url)


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("", "file"):
        return "file"
    if scheme in ("http", "https", "ftp", "s3"):
        return scheme
    raise SourceError(redact_url(url), f"unsupported URL scheme {scheme!r}")


def _target_name(url: str, file_name: str | None) -> str:
    """The destination's file name; refuses anything that would escape the staging folder."""
    if file_name is None:
        is_url = "://" in url
        path = unquote(urlsplit(url).path) if is_url else url
        file_name = PurePosixPath(path).name
    if not file_name or file_name in (".", "..") or "/" in file_name or "\\" in file_name:
        raise SourceError(
            redact_url(url), f"no usable file name ({file_name!r}); pass file_name= explicitly"
        )
    return file_name


def _scrub(text: str, url: str) -> str:
    """Remove the URL's password (raw and percent-encoded) from a message from a library."""
    password = urlsplit(url).password
    if not password:
        return text
    text = text.replace(url, redact_url(url))
    for secret in {password, unquote(password), quote(unquote(password), safe="")}:
        text = text.replace(secret, "***")
    return text


def _error(
    url: str, reason: str, *, transient: bool = False, not_found: bool = False
) -> SourceError:
    kind = TransientSourceError if transient else SourceError
    return kind(redact_url(url), _scrub(reason, url), not_found=not_found)


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, TransientSourceError)


def _retrying(operation: Callable[[], T], policy: RetryPolicy, describe: str) -> T:
    return with_retries(
        lambda _deadline: operation(), policy=policy, is_transient=_is_transient, describe=describe
    )


def _within(operation: Callable[[], T], budget: _Budget | None) -> Callable[[], T]:
    """`operation`, refused once the budget's time is spent (so retries cannot outlast it)."""
    if budget is None:
        return operation

    def bounded() -> T:
        budget.check_time()
        return operation()

    return bounded


class _StagedFile:
    """A temporary file beside `destination`, hashed while written, renamed on commit.

    The temporary file survives failed attempts (so HTTP can resume it) and is removed by
    `discard`, which callers run in a `finally`.
    """

    def __init__(self, destination: Path, budget: _Budget | None = None) -> None:
        self.destination = destination
        self.budget = budget
        handle, name = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
        )
        os.close(handle)
        self.path = Path(name)
        self.size = 0
        self._hash = sha256_stream()

    def restart(self) -> None:
        """Drop whatever an earlier attempt wrote."""
        self.path.write_bytes(b"")
        self.size, self._hash = 0, sha256_stream()

    def keep_existing(self) -> None:
        """Continue after the bytes already on disk (their hash is recomputed from the file)."""
        self.size, self._hash = 0, sha256_stream()
        with self.path.open("rb") as existing:
            for chunk in iter(lambda: existing.read(CHUNK_SIZE), b""):
                self._hash.update(chunk)
                self.size += len(chunk)

    @contextlib.contextmanager
    def appender(self) -> Iterator[Callable[[bytes], None]]:
        """A `write(chunk)` callback (what ftplib wants) that also hashes and counts."""
        with self.path.open("ab") as out:

            def write(chunk: bytes) -> None:
                if self.budget is not None:
                    # Checked before writing: an endless or slow-drip source stops here.
                    self.budget.check_size(self.size + len(chunk))
                    self.budget.check_time()
                out.write(chunk)
                self._hash.update(chunk)
                self.size += len(chunk)

            yield write

    def write_all(self, chunks: Iterable[bytes]) -> None:
        with self.appender() as write:
            for chunk in chunks:
                write(chunk)

    def commit(self, url: str, fingerprint: SourceFingerprint) -> FetchedFile:
        if self.budget is not None and self.budget.limits.check_file is not None:
            self.budget.limits.check_file(redact_url(url), self.path)
        os.replace(self.path, self.destination)
        return FetchedFile(
            url=redact_url(url),
            path=self.destination,
            size=self.size,
            sha256=self._hash.hexdigest(),
            fingerprint=fingerprint,
        )

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _check_size(url: str, staged: _StagedFile, expected: int | None) -> None:
    if expected is not None and staged.size != expected:
        raise _error(
            url, f"received {staged.size} bytes, the source announced {expected}", transient=True
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _write_sidecar(fetched: FetchedFile) -> None:
    record = {
        "token": fetched.fingerprint.token(),
        "fingerprint": asdict(fetched.fingerprint),
        "size": fetched.size,
        "sha256": fetched.sha256,
    }
    sidecar = _sidecar_path(fetched.path)
    temporary = sidecar.with_name(sidecar.name + ".part")
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, sidecar)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(_sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
