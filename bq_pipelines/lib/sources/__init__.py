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

Local files (plain paths and file:// URLs, whatever declared them) are confined: with
`FetchLimits.local_root`, a local location is resolved (symlinks followed) and refused unless it
lies under that root, and the resolved path is what is read (`confined_local_path`, the one
check, also run when a declaration loads).

URLs chosen by someone else (the ingestion API) are fetched with `FetchLimits`: a guard checks
the URL and every redirect hop and pins each connection to addresses it allowed, the size and the
wall time of the download are capped, and the file can be inspected before it is committed. A
refusal raises SourceRefused, never retried.

One module per backend (`http`, `ftp`, `s3`, `local`) beside what they share (`common`); this
module is the public API and dispatches by URL scheme.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import anyio.to_thread

from bq_pipelines.lib.errors import SourceRefused
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.sources.common import (
    DEFAULT_RETRY,
    FetchedFile,
    FetchLimits,
    SourceFingerprint,
    UrlGuard,
    _Budget,
    _guard_url,
    _read_sidecar,
    _retrying,
    _scheme,
    _StagedFile,
    _target_name,
    _within,
    _write_sidecar,
)
from bq_pipelines.lib.sources.ftp import _ftp_fetch, _ftp_probe
from bq_pipelines.lib.sources.http import (
    AsyncHttpSession,
    HttpSession,
    _http_fetch,
    _http_probe,
    _http_probe_async,
)
from bq_pipelines.lib.sources.local import (
    _describe_in_place,
    _file_fetch,
    _file_fingerprint,
    _local_path,
    _same_file,
)
from bq_pipelines.lib.sources.s3 import _s3_fetch, _s3_probe

__all__ = [
    "AsyncHttpSession",
    "FetchLimits",
    "FetchedFile",
    "HttpSession",
    "SourceFingerprint",
    "UrlGuard",
    "confined_local_path",
    "describe_local",
    "fetch",
    "is_local",
    "path_under_root",
    "probe",
    "probe_async",
]

logger = logging.getLogger(__name__)


def probe(
    url: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 30.0,
    s3_endpoint_url: str | None = None,
    limits: FetchLimits | None = None,
    http: HttpSession | None = None,
) -> SourceFingerprint:
    """HEAD/stat `url` (no body download); `limits.guard` checks it and every redirect hop.
    `http`: the run's HTTP client (else one for this call).

    Raises SourceError (TransientSourceError once retries of a transient failure are exhausted,
    SourceRefused when the guard refuses).
    """
    scheme = _scheme(url)
    _guard_url(url, limits)
    if limits is not None:
        timeout = _Budget(url, limits).timeout(timeout)
    if scheme == "file":
        return _file_fingerprint(url, _local_source(url, limits))
    with _session(http) as session:
        if scheme in ("http", "https"):
            operation: Callable[[], SourceFingerprint] = partial(
                _http_probe, url, timeout, limits, session
            )
        elif scheme == "ftp":
            operation = partial(_ftp_probe, url, timeout)
        else:
            operation = partial(_s3_probe, url, timeout, s3_endpoint_url)
        return _retrying(operation, retry, f"probe {redact_url(url)}")


async def probe_async(
    url: str, *, timeout: float, limits: FetchLimits, http: AsyncHttpSession
) -> SourceFingerprint:
    """`probe` for an event loop, in one attempt, under `limits` whose guard is `http`'s (the
    same checks: the URL and every redirect hop, each connection pinned). http(s) runs on the
    session's async client; another scheme's probe runs in a worker thread."""
    if limits.guard is not http.guard:
        raise ValueError("probe_async: the limits' guard must be the session's")
    if _scheme(url) not in ("http", "https"):
        blocking = partial(probe, url, retry=RetryPolicy(attempts=1), timeout=timeout)
        return await anyio.to_thread.run_sync(partial(blocking, limits=limits))
    await http.check_url(url)
    return await _http_probe_async(url, _Budget(url, limits).timeout(timeout), http)


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
    http: HttpSession | None = None,
) -> FetchedFile:
    """Download `url` into `staging_dir/<file_name or URL basename>`.

    Streams to a temporary file in the same folder, verifies the size announced by the server,
    computes sha256 while streaming, then renames atomically. Retries transient errors with
    backoff; a 404, permission or TLS failure raises SourceError naming the URL at once.
    With `reuse_unchanged`, an existing destination whose recorded fingerprint still matches the
    source is returned without downloading (see the module docstring). `limits` bound a fetch
    of an untrusted URL (SourceRefused when exceeded; the destination is never reused then).
    `http`: the run's HTTP client (else one for this call).
    """
    scheme = _scheme(url)
    _guard_url(url, limits)
    staging_dir.mkdir(parents=True, exist_ok=True)
    destination = staging_dir / _target_name(url, file_name)
    source = _local_source(url, limits) if scheme == "file" else None
    if source is not None and destination.exists() and _same_file(source, destination):
        # The file is already where the caller wants it: hash it in place, never copy.
        return _describe_in_place(url, source)
    with _session(http) as session:
        if reuse_unchanged and limits is None:
            reused = _reuse_if_unchanged(url, destination, retry, timeout, s3_endpoint_url, session)
            if reused is not None:
                return reused
        budget = _Budget(url, limits) if limits is not None else None
        fetched = _download(
            url, scheme, destination, retry, timeout, s3_endpoint_url, session, budget, source
        )
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


def describe_local(url: str, limits: FetchLimits | None = None) -> FetchedFile:
    """A local source as a FetchedFile read where it lies (hashed, never copied): a multi-GB
    cube is read by every partition of its dataset. `limits.local_root` confines it."""
    return _describe_in_place(url, _local_source(url, limits))


def path_under_root(root: Path, relative: str, root_name: str = "the data root") -> Path:
    """`root/relative` with every symlink resolved, refused (SourceRefused) unless it is still
    under the resolved `root`: a `..`, an absolute path or a symlink pointing elsewhere can
    never make a dataset read a file outside its data root. The resolved path is what is read,
    so a link changed afterwards does not matter either."""
    base = root.resolve()
    return _inside(base, base / relative, str(base / relative), root_name)


def confined_local_path(location: str, root: Path, root_name: str = "the data root") -> Path:
    """The file a local location names (a file:// URL, or a plain path: absolute, or relative
    to the working directory as it would be read), every symlink resolved; SourceRefused unless
    it lies under the resolved `root`. The one sandbox of local sources, whatever names them: a
    declared `url`, a host's base URL, a mirror (BQ_SOURCE_BASE_URLS), an API request."""
    return _inside(root.resolve(), _local_path(location), redact_url(location), root_name)


def _inside(base: Path, path: Path, shown: str, root_name: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(base):
        raise SourceRefused(
            shown,
            f"resolves to {resolved}, outside the local data root {base} ({root_name}); "
            "local sources must stay under it (symlinks included)",
        )
    return resolved


def _local_source(url: str, limits: FetchLimits | None) -> Path:
    """The local file `url` names: confined to `limits.local_root` when there is one."""
    if limits is None or limits.local_root is None:
        return _local_path(url)
    return confined_local_path(url, limits.local_root, limits.setting_name("LOCAL_DATA_ROOT"))


@contextlib.contextmanager
def _session(http: HttpSession | None) -> Iterator[HttpSession]:
    """The caller's session, or one for this call only."""
    if http is not None:
        yield http
        return
    with HttpSession() as session:
        yield session


def _download(
    url: str,
    scheme: str,
    destination: Path,
    retry: RetryPolicy,
    timeout: float,
    s3_endpoint_url: str | None,
    session: HttpSession,
    budget: _Budget | None = None,
    local_source: Path | None = None,
) -> FetchedFile:
    staged = _StagedFile(destination, budget)
    if budget is not None:
        timeout = budget.timeout(timeout)
    try:
        if scheme == "file":
            return _file_fetch(url, local_source or _local_path(url), staged)
        if scheme in ("http", "https"):
            return _http_fetch(url, staged, retry, timeout, session)
        if scheme == "ftp":
            operation: Callable[[], FetchedFile] = partial(_ftp_fetch, url, staged, timeout)
        else:
            operation = partial(_s3_fetch, url, staged, timeout, s3_endpoint_url)
        return _retrying(_within(operation, budget), retry, f"fetch {redact_url(url)}")
    finally:
        staged.discard()


def _reuse_if_unchanged(
    url: str,
    destination: Path,
    retry: RetryPolicy,
    timeout: float,
    s3_endpoint_url: str | None,
    session: HttpSession,
) -> FetchedFile | None:
    """The existing destination if the source still has the fingerprint recorded beside it."""
    if not destination.is_file():
        return None
    record = _read_sidecar(destination)
    if record is None:
        return None
    current = probe(
        url, retry=retry, timeout=timeout, s3_endpoint_url=s3_endpoint_url, http=session
    )
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
