"""Fetch a remote or local file into a staging folder: streamed, atomic, checksummed, retried.

Supported URLs: http(s)://, ftp://, file:// (or a plain path) and s3://bucket/key.

Every download streams into a hidden temporary file beside its destination (same filesystem),
hashing on the way, checks the byte count against the size the source announced, then
`os.replace`s it into place, so a destination path never holds a partial file.

Skipping unchanged files: after a download, `<file>.fingerprint` (JSON) records the source's
fingerprint and the file's sha256. A later `fetch` of the same destination probes the source (one
HEAD / SIZE+MDTM / stat / head_object) and returns the existing file without downloading when the
fingerprint token is unchanged and the file on disk still has the announced size. Sources that
offer neither an ETag nor a modification time are always downloaded again.

Credentials embedded in URLs (`https://user:secret@host/...`) are used for the request but never
appear in logs, errors, fingerprints or sidecars: those carry the URL without its userinfo.

URLs chosen by someone else (the ingestion API) are fetched with `FetchLimits`: a guard checks
the URL and every redirect hop and pins each connection to addresses it allowed, the size and the
wall time of the download are capped, and the file can be inspected before it is committed. A
refusal raises SourceRefused, never retried.
"""

from __future__ import annotations

import contextlib
import email.utils
import ftplib
import hashlib
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

import boto3
import botocore.config
import botocore.exceptions
import httpx

from bq_pipelines.lib.errors import SourceError, SourceRefused, TransientSourceError
from bq_pipelines.lib.http_guard import GuardedTransport
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import RetryPolicy, with_retries

T = TypeVar("T")
logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
DEFAULT_RETRY = RetryPolicy()
SIDECAR_SUFFIX = ".fingerprint"
# 408/429 and server errors say "try again later"; every other 4xx is a property of the request.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})
# Some servers refuse HEAD; a one-byte ranged GET gives the same headers.
HEAD_REFUSED_STATUSES = frozenset({405, 501})


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
    """Where a fetch may go: the caller's policy (see api/url_policy.py)."""

    def check_url(self, url: str) -> None:
        """Raise SourceRefused unless `url` (the first URL or a redirect's target) is allowed."""

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` a connection may use, resolved once (the connection is
        pinned to them); raise SourceRefused when none is allowed."""


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
    # conversion (lib/pipeline.py, lib/cog.py); SourceRefused beyond.
    max_pixels: int | None = None
    # Refusals name the setting of the limit: `<prefix>MAX_DOWNLOAD_BYTES`, `<prefix>MAX_PIXELS`.
    settings_prefix: str | None = None

    def setting(self, name: str) -> str:
        """` (<prefix><name>)` for a refusal's message, or nothing."""
        return f" ({self.settings_prefix}{name})" if self.settings_prefix else ""


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


# --------------------------------------------------------------------------- public API


def probe(
    url: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 30.0,
    s3_endpoint_url: str | None = None,
    limits: FetchLimits | None = None,
) -> SourceFingerprint:
    """HEAD/stat `url` (no body download); `limits.guard` checks it and every redirect hop.

    Raises SourceError (TransientSourceError once retries of a transient failure are exhausted,
    SourceRefused when the guard refuses).
    """
    scheme = _scheme(url)
    _guard_url(url, limits)
    if limits is not None:
        timeout = _Budget(url, limits).timeout(timeout)
    if scheme == "file":
        return _file_fingerprint(url, _local_path(url))
    if scheme in ("http", "https"):
        operation: Callable[[], SourceFingerprint] = partial(_http_probe, url, timeout, limits)
    elif scheme == "ftp":
        operation = partial(_ftp_probe, url, timeout)
    else:
        operation = partial(_s3_probe, url, timeout, s3_endpoint_url)
    return _retrying(operation, retry, f"probe {redact_url(url)}")


def fetch(
    url: str,
    staging_dir: Path,
    *,
    file_name: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 60.0,
    s3_endpoint_url: str | None = None,
    reuse_unchanged: bool = True,
    limits: FetchLimits | None = None,
) -> FetchedFile:
    """Download `url` into `staging_dir/<file_name or URL basename>`.

    Streams to a temporary file in the same folder, verifies the size announced by the server,
    computes sha256 while streaming, then renames atomically. Retries transient errors with
    backoff; a 404, permission or TLS failure raises SourceError naming the URL at once.
    With `reuse_unchanged`, an existing destination whose recorded fingerprint still matches the
    source is returned without downloading (see the module docstring). `limits` bound a fetch
    of an untrusted URL (SourceRefused when exceeded; the destination is never reused then).
    """
    scheme = _scheme(url)
    _guard_url(url, limits)
    staging_dir.mkdir(parents=True, exist_ok=True)
    destination = staging_dir / _target_name(url, file_name)
    if scheme == "file":
        source = _local_path(url)
        if destination.exists() and _same_file(source, destination):
            # The file is already where the caller wants it: hash it in place, never copy.
            return _describe_in_place(url, source)
    if reuse_unchanged and limits is None:
        reused = _reuse_if_unchanged(url, destination, retry, timeout, s3_endpoint_url)
        if reused is not None:
            return reused
    budget = _Budget(url, limits) if limits is not None else None
    fetched = _download(url, scheme, destination, retry, timeout, s3_endpoint_url, budget)
    _write_sidecar(fetched)
    logger.info(
        "fetched %s -> %s (%d bytes, sha256 %s)",
        fetched.url,
        fetched.path,
        fetched.size,
        fetched.sha256,
    )
    return fetched


def is_local(url: str) -> bool:
    """A plain path or a file:// URL."""
    return _scheme(url) == "file"


def describe_local(url: str) -> FetchedFile:
    """A local source as a FetchedFile read where it lies (hashed, never copied): a multi-GB
    cube is read by every partition of its dataset."""
    return _describe_in_place(url, _local_path(url))


def path_under_root(root: Path, relative: str, root_name: str = "the data root") -> Path:
    """`root/relative` with every symlink resolved, refused (SourceRefused) unless it is still
    under the resolved `root`: a `..`, an absolute path or a symlink pointing elsewhere can
    never make a dataset read a file outside its data root. The resolved path is what is read,
    so a link changed afterwards does not matter either."""
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise SourceRefused(
            str(base / relative),
            f"resolves to {path}, outside the local data root {base} ({root_name}); "
            "local sources must stay under it (symlinks included)",
        )
    return path


# --------------------------------------------------------------------------- shared plumbing


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
    return with_retries(operation, policy=policy, is_transient=_is_transient, describe=describe)


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
        self._hash = hashlib.sha256()

    def restart(self) -> None:
        """Drop whatever an earlier attempt wrote."""
        self.path.write_bytes(b"")
        self.size, self._hash = 0, hashlib.sha256()

    def keep_existing(self) -> None:
        """Continue after the bytes already on disk (their hash is recomputed from the file)."""
        self.size, self._hash = 0, hashlib.sha256()
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


def _download(
    url: str,
    scheme: str,
    destination: Path,
    retry: RetryPolicy,
    timeout: float,
    s3_endpoint_url: str | None,
    budget: _Budget | None = None,
) -> FetchedFile:
    staged = _StagedFile(destination, budget)
    if budget is not None:
        timeout = budget.timeout(timeout)
    try:
        if scheme == "file":
            return _file_fetch(url, _local_path(url), staged)
        if scheme in ("http", "https"):
            return _http_fetch(url, staged, retry, timeout)
        if scheme == "ftp":
            operation: Callable[[], FetchedFile] = partial(_ftp_fetch, url, staged, timeout)
        else:
            operation = partial(_s3_fetch, url, staged, timeout, s3_endpoint_url)
        return _retrying(_within(operation, budget), retry, f"fetch {redact_url(url)}")
    finally:
        staged.discard()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- sidecar / reuse


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


def _reuse_if_unchanged(
    url: str,
    destination: Path,
    retry: RetryPolicy,
    timeout: float,
    s3_endpoint_url: str | None,
) -> FetchedFile | None:
    """The existing destination if the source still has the fingerprint recorded beside it."""
    if not destination.is_file():
        return None
    record = _read_sidecar(destination)
    if record is None:
        return None
    current = probe(url, retry=retry, timeout=timeout, s3_endpoint_url=s3_endpoint_url)
    on_disk = destination.stat().st_size
    unchanged = (
        current.has_validator
        and record.get("token") == current.token()
        and record.get("size") == on_disk
        and current.size in (None, on_disk)
    )
    if not unchanged:
        return None
    logger.info("skipping %s: unchanged since it was fetched to %s", current.url, destination)
    # The sha256 comes from the sidecar: rehashing a multi-GB file would cost as much as the
    # download we are avoiding; the size and the source's validator vouch for it.
    return FetchedFile(current.url, destination, on_disk, str(record["sha256"]), current)


# --------------------------------------------------------------------------- local files


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
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return FetchedFile(fingerprint.url, path, path.stat().st_size, digest.hexdigest(), fingerprint)


# --------------------------------------------------------------------------- HTTP(S)


@dataclass
class _HttpAttemptState:
    """What one attempt tells the next: resume validator and the server's Retry-After."""

    resume_validator: str | None = None
    retry_after: float = 0.0


def _http_client(url: str, timeout: float, limits: FetchLimits | None = None) -> httpx.Client:
    """A client for `url`; send it `redact_url(url)`, the credentials travel as `auth`.

    With a guard, every request (each redirect hop) is checked before it is sent, and every
    connection goes to an address the guard resolved and allowed.
    """
    parts = urlsplit(url)
    # httpx logs every request URL at INFO: userinfo must not be part of it.
    auth = None
    if parts.username is not None:
        auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    guard = limits.guard if limits is not None else None
    guarded: dict[str, Any] = {}
    if guard is not None:
        guarded = {
            "transport": GuardedTransport(guard.addresses),
            "event_hooks": {"request": [lambda request: guard.check_url(str(request.url))]},
        }
    # identity: the bytes on disk are the bytes the server holds, and Content-Length counts them.
    return httpx.Client(
        auth=auth,
        follow_redirects=True,
        timeout=httpx.Timeout(timeout),
        headers={"Accept-Encoding": "identity"},
        **guarded,
    )


def _tls_failure(error: BaseException) -> str | None:
    """A description if `error` (or what caused it) is a TLS failure, else None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate verify failed: {seen.verify_message or seen}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS error: {seen}"
        seen = seen.__cause__ or seen.__context__
    if "CERTIFICATE_VERIFY_FAILED" in str(error):
        return f"TLS certificate verify failed: {error}"
    return None


@contextlib.contextmanager
def _http_errors(url: str) -> Iterator[None]:
    """Translate httpx exceptions into SourceError / TransientSourceError naming the URL."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise _error(url, f"timed out ({type(error).__name__})", transient=True) from error
    except httpx.ConnectError as error:
        tls = _tls_failure(error)
        if tls:
            raise _error(url, tls) from error
        raise _error(url, f"connection failed: {error}", transient=True) from error
    except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
        raise _error(url, f"connection broken: {error}", transient=True) from error
    except httpx.HTTPError as error:
        raise _error(url, f"{type(error).__name__}: {error}") from error


def _retry_after_seconds(value: str | None) -> float:
    if not value:
        return 0.0
    if value.strip().isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _raise_for_status(url: str, response: httpx.Response, state: _HttpAttemptState) -> None:
    status = response.status_code
    if status < 400:
        return
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    transient = status >= 500 or status in TRANSIENT_HTTP_STATUSES
    if status == 429:
        state.retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
    raise _error(url, reason, transient=transient, not_found=status in (404, 410))


def _http_fingerprint(url: str, response: httpx.Response) -> SourceFingerprint:
    headers = response.headers
    size: int | None = None
    content_range = headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range:
        total = content_range.rpartition("/")[2]
        size = int(total) if total.isdigit() else None
    elif headers.get("Content-Length", "").isdigit():
        size = int(headers["Content-Length"])
    return SourceFingerprint(
        redact_url(url), size, headers.get("ETag"), headers.get("Last-Modified")
    )


def _http_probe(url: str, timeout: float, limits: FetchLimits | None = None) -> SourceFingerprint:
    state = _HttpAttemptState()
    with _http_client(url, timeout, limits) as client, _http_errors(url):
        response = client.head(redact_url(url))
        if response.status_code in HEAD_REFUSED_STATUSES:
            ranged_get = client.stream("GET", redact_url(url), headers={"Range": "bytes=0-0"})
            with ranged_get as ranged:
                _raise_for_status(url, ranged, state)
                return _http_fingerprint(url, ranged)
        _raise_for_status(url, response, state)
        return _http_fingerprint(url, response)


def _resume_validator(response: httpx.Response) -> str | None:
    """The If-Range value that makes a later ranged GET safe, if the server supports ranges."""
    if response.headers.get("Accept-Ranges", "").lower() != "bytes":
        return None
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return response.headers.get("Last-Modified")


def _range_start(response: httpx.Response) -> int | None:
    """First byte of a 206 answer's Content-Range (`bytes 100-199/200`)."""
    spec = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
    return int(spec) if spec.isdigit() else None


def _http_attempt(
    client: httpx.Client, url: str, staged: _StagedFile, state: _HttpAttemptState
) -> FetchedFile:
    if state.retry_after:
        time.sleep(state.retry_after)
        state.retry_after = 0.0
    offset = staged.path.stat().st_size
    headers = {}
    if offset and state.resume_validator:
        # If-Range: the server sends the whole file (200) if it changed since the partial.
        headers = {"Range": f"bytes={offset}-", "If-Range": state.resume_validator}
    with _http_errors(url), client.stream("GET", redact_url(url), headers=headers) as response:
        if headers and response.status_code == 416:
            state.resume_validator = None  # the next attempt starts from byte 0
            raise _error(url, "server refused to resume (HTTP 416)", transient=True)
        _raise_for_status(url, response, state)
        if headers and response.status_code == 206 and _range_start(response) == offset:
            staged.keep_existing()
            logger.info("resuming %s at byte %d", redact_url(url), offset)
        else:
            staged.restart()
        state.resume_validator = _resume_validator(response)
        fingerprint = _http_fingerprint(url, response)
        if staged.budget is not None:
            staged.budget.check_size(fingerprint.size)  # refused before the body is read
        # Unbuffered chunks: what arrived before a drop is on disk and can be resumed.
        staged.write_all(response.iter_raw())
    _check_size(url, staged, fingerprint.size)
    return staged.commit(url, fingerprint)


def _http_fetch(url: str, staged: _StagedFile, retry: RetryPolicy, timeout: float) -> FetchedFile:
    state = _HttpAttemptState()
    limits = staged.budget.limits if staged.budget is not None else None
    with _http_client(url, timeout, limits) as client:

        def attempt() -> FetchedFile:
            # Retry-After is honoured before the next attempt (on top of the policy's backoff,
            # which with_retries owns), capped like any other backoff.
            state.retry_after = min(state.retry_after, retry.max_backoff_seconds)
            return _http_attempt(client, url, staged, state)

        return _retrying(_within(attempt, staged.budget), retry, f"GET {redact_url(url)}")


# --------------------------------------------------------------------------- FTP


@contextlib.contextmanager
def _ftp_session(url: str, timeout: float) -> Iterator[tuple[ftplib.FTP, str]]:
    """A logged-in passive binary FTP session and the decoded remote path."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else "anonymous"
    password = unquote(parts.password) if parts.password else "anonymous@"
    with _ftp_errors(url), ftplib.FTP(timeout=timeout) as ftp:
        ftp.connect(parts.hostname or "", parts.port or 21)
        ftp.login(user, password)
        ftp.set_pasv(True)
        ftp.voidcmd("TYPE I")  # SIZE answers in bytes only in binary mode
        yield ftp, unquote(parts.path)


@contextlib.contextmanager
def _ftp_errors(url: str) -> Iterator[None]:
    try:
        yield
    except ftplib.error_perm as error:
        message = str(error)
        if message.startswith("550"):
            raise _error(url, f"not found ({message})", not_found=True) from error
        if message.startswith("530"):
            raise _error(url, f"login refused ({message})") from error
        raise _error(url, f"FTP refused: {message}") from error
    except (ftplib.error_temp, ftplib.error_reply, EOFError, OSError) as error:
        # socket.timeout and connection resets are OSErrors: worth another try.
        raise _error(url, f"FTP failed: {type(error).__name__}: {error}", transient=True) from error


def _ftp_fingerprint(url: str, ftp: ftplib.FTP, path: str) -> SourceFingerprint:
    size = ftp.size(path)
    modified: str | None = None
    with contextlib.suppress(ftplib.error_perm):  # MDTM is an extension some servers lack
        stamp = ftp.sendcmd(f"MDTM {path}").split()[-1]
        parsed = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        modified = _iso(parsed)
    return SourceFingerprint(redact_url(url), size, None, modified)


def _ftp_probe(url: str, timeout: float) -> SourceFingerprint:
    with _ftp_session(url, timeout) as (ftp, path):
        return _ftp_fingerprint(url, ftp, path)


def _ftp_fetch(url: str, staged: _StagedFile, timeout: float) -> FetchedFile:
    staged.restart()
    with _ftp_session(url, timeout) as (ftp, path):
        fingerprint = _ftp_fingerprint(url, ftp, path)
        with staged.appender() as write:
            ftp.retrbinary(f"RETR {path}", write, blocksize=CHUNK_SIZE)
    _check_size(url, staged, fingerprint.size)
    return staged.commit(url, fingerprint)


# --------------------------------------------------------------------------- S3


def _s3_location(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    key = unquote(parts.path).lstrip("/")
    if not parts.netloc or not key:
        raise _error(url, "an S3 URL must look like s3://bucket/key")
    return parts.netloc, key


def _s3_client(timeout: float, endpoint_url: str | None) -> Any:
    # Our retry policy owns retrying; botocore's own retries would multiply the attempts.
    config = botocore.config.Config(
        connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1}
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


@contextlib.contextmanager
def _s3_errors(url: str) -> Iterator[None]:
    try:
        yield
    except botocore.exceptions.ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            raise _error(url, f"not found ({code})", not_found=True) from error
        transient = status >= 500 or status == 429 or code in ("SlowDown", "Throttling")
        raise _error(url, f"S3 {code or status}: {error}", transient=transient) from error
    except botocore.exceptions.NoCredentialsError as error:
        raise _error(url, "no AWS credentials: set AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY") from error
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ResponseStreamingError,
        botocore.exceptions.IncompleteReadError,
        TimeoutError,
        ConnectionError,
    ) as error:
        raise _error(url, f"S3 connection failed: {error}", transient=True) from error
    except botocore.exceptions.BotoCoreError as error:
        raise _error(url, f"S3 failed: {error}") from error


def _s3_fingerprint(url: str, response: dict[str, Any]) -> SourceFingerprint:
    modified = response.get("LastModified")
    return SourceFingerprint(
        redact_url(url),
        int(response["ContentLength"]),
        response.get("ETag"),
        _iso(modified) if isinstance(modified, datetime) else None,
    )


def _s3_probe(url: str, timeout: float, endpoint_url: str | None) -> SourceFingerprint:
    bucket, key = _s3_location(url)
    with _s3_errors(url):
        response = _s3_client(timeout, endpoint_url).head_object(Bucket=bucket, Key=key)
    return _s3_fingerprint(url, response)


def _s3_fetch(
    url: str, staged: _StagedFile, timeout: float, endpoint_url: str | None
) -> FetchedFile:
    bucket, key = _s3_location(url)
    staged.restart()
    with _s3_errors(url):
        response = _s3_client(timeout, endpoint_url).get_object(Bucket=bucket, Key=key)
        body: BinaryIO = response["Body"]
        with contextlib.closing(body):
            staged.write_all(iter(lambda: body.read(CHUNK_SIZE), b""))
    fingerprint = _s3_fingerprint(url, response)
    _check_size(url, staged, fingerprint.size)
    return staged.commit(url, fingerprint)
