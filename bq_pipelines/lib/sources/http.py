"""HTTP(S) sources: HEAD (or a one-byte ranged GET) to probe, streamed GETs that resume."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread
import httpx

from bq_pipelines.lib.http_guard import AsyncGuardedTransport, GuardedTransport, verified_context
from bq_pipelines.lib.pinned_head import AsyncPinnedHead
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.sources.common import (
    FetchedFile,
    FetchLimits,
    SourceFingerprint,
    UrlGuard,
    _check_size,
    _error,
    _retrying,
    _StagedFile,
    _within,
)

# 408/429 and server errors say "try again later"; every other 4xx is a property of the request.
logger = logging.getLogger(__name__)
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})
# Some servers refuse HEAD; a one-byte ranged GET gives the same headers.
HEAD_REFUSED_STATUSES = frozenset({405, 501})


@dataclass
class _HttpAttemptState:
    """What one attempt tells the next: resume validator and the server's Retry-After."""

    resume_validator: str | None = None
    retry_after: float = 0.0


class HttpSession:
    """One HTTP client for every probe and fetch of a run: connections are kept alive and the
    TLS context (the CA bundle, ~70 ms to load) is built once, instead of once per request.

    Trusted URLs only, unless the session is made with a `guard`: a fetch with another guard
    (`FetchLimits.guard`) gets a client of its own, whose transport is pinned to the addresses
    that guard allowed; a session made with `guard` (the ingestion API's source policy) shares
    one such client between the requests it checks, so a source host's connection is kept
    alive from one probe to the next. Credentials and timeouts travel with each request, so
    URLs of different hosts share the client. Safe to share between threads; a process forked
    with it builds its own client (sockets are not shared).
    """

    def __init__(self, guard: UrlGuard | None = None) -> None:
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._pid = 0
        self._guard = guard

    @contextlib.contextmanager
    def client(self, limits: FetchLimits | None = None) -> Iterator[httpx.Client]:
        guard = limits.guard if limits is not None else None
        if guard is not self._guard:
            with _new_client(limits) as client:
                yield client
            return
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client, self._pid = _new_client(limits), os.getpid()
            client = self._client
        yield client

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None

    def __enter__(self) -> HttpSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncHttpSession:
    """`HttpSession(guard=...)` for an event loop (the ingestion API's probes): one kept-alive
    `httpx.AsyncClient` whose every request, redirect hops included, is checked by `guard` and
    whose every connection is pinned to the addresses it allowed. Bound to the event loop that
    first uses it."""

    def __init__(self, guard: UrlGuard) -> None:
        self.guard = guard
        self._client: httpx.AsyncClient | None = None
        self._head: AsyncPinnedHead | None = None

    async def head(self, url: str, *, authorization: str | None, timeout: float) -> httpx.Response:
        """HEAD `url` on the session's lean client (lib/pinned_head.py): the same pinning and
        hop checks as `client()`, a third of its CPU."""
        if self._head is None:
            self._head = AsyncPinnedHead(self.guard.addresses, self.check_url)
        return await self._head.head(url, authorization=authorization, timeout=timeout)

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=True,
                headers={"Accept-Encoding": "identity"},
                transport=AsyncGuardedTransport(self.guard.addresses),
                event_hooks={"request": [self._check_hop]},
            )
        return self._client

    async def check_url(self, url: str) -> None:
        """The guard's check; in a worker thread when it asks DNS (a scheme-wide entry), else
        here: waking a thread for every hop cost more CPU than the check (bench/NOTES.md)."""
        if self.guard.resolves(url):
            await anyio.to_thread.run_sync(self.guard.check_url, url)
        else:
            self.guard.check_url(url)

    async def _check_hop(self, request: httpx.Request) -> None:
        await self.check_url(str(request.url))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._head is not None:
            await self._head.aclose()
        self._client, self._head = None, None


def _new_client(limits: FetchLimits | None = None) -> httpx.Client:
    """A client following redirects; with a guard, every request (each redirect hop) is checked
    before it is sent, and every connection goes to an address the guard resolved and allowed.
    """
    guard = limits.guard if limits is not None else None
    # The process's TLS context: a client building its own loads the CA bundle (~20 ms of CPU).
    options: dict[str, Any] = {"verify": verified_context(True)}
    if guard is not None:
        options["transport"] = GuardedTransport(guard.addresses)
        options["event_hooks"] = {"request": [lambda request: guard.check_url(str(request.url))]}
    # identity: the bytes on disk are the bytes the server holds, and Content-Length counts them.
    return httpx.Client(follow_redirects=True, headers={"Accept-Encoding": "identity"}, **options)


def _request_options(url: str, timeout: float) -> dict[str, Any]:
    """Per request: send `redact_url(url)` with these; the credentials travel as `auth` (httpx
    logs every request URL at INFO: userinfo must not be part of it)."""
    credentials = _credentials(url)
    auth = httpx.BasicAuth(*credentials) if credentials is not None else None
    return {"auth": auth, "timeout": httpx.Timeout(timeout)}


def _basic_authorization(url: str) -> str | None:
    """The Authorization header httpx.BasicAuth sends for the URL's userinfo, if it has one."""
    credentials = _credentials(url)
    if credentials is None:
        return None
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode("ascii")


def _credentials(url: str) -> tuple[str, str] | None:
    """The URL's user name and password, percent-decoded, if it has userinfo."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


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


def _http_probe(
    url: str, timeout: float, limits: FetchLimits | None, session: HttpSession
) -> SourceFingerprint:
    state = _HttpAttemptState()
    options = _request_options(url, timeout)
    with session.client(limits) as client, _http_errors(url):
        response = client.head(redact_url(url), **options)
        if response.status_code in HEAD_REFUSED_STATUSES:
            ranged_get = client.stream(
                "GET", redact_url(url), headers={"Range": "bytes=0-0"}, **options
            )
            with ranged_get as ranged:
                _raise_for_status(url, ranged, state)
                return _http_fingerprint(url, ranged)
        _raise_for_status(url, response, state)
        return _http_fingerprint(url, response)


async def _http_probe_async(
    url: str, timeout: float, session: AsyncHttpSession
) -> SourceFingerprint:
    """`_http_probe` on the session's lean HEAD (httpx's client for the ranged GET), one
    attempt."""
    state = _HttpAttemptState()
    with _http_errors(url):
        response = await session.head(
            redact_url(url), authorization=_basic_authorization(url), timeout=timeout
        )
        if response.status_code in HEAD_REFUSED_STATUSES:
            ranged_get = session.client().stream(
                "GET",
                redact_url(url),
                headers={"Range": "bytes=0-0"},
                **_request_options(url, timeout),
            )
            async with ranged_get as ranged:
                _raise_for_status(url, ranged, state)
                return _http_fingerprint(url, ranged)
        _raise_for_status(url, response, state)
        return _http_fingerprint(url, response)


def _resume_validator(response: httpx.Response) -> str | None:
    """The If-Range value that makes a later ranged GET safe, if the server supports ranges."""
    if response.headers.get("Accept-Ranges", "").lower() != "bytes":
        return None
    etag: str | None = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    modified: str | None = response.headers.get("Last-Modified")
    return modified


def _range_start(response: httpx.Response) -> int | None:
    """First byte of a 206 answer's Content-Range (`bytes 100-199/200`)."""
    spec = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
    return int(spec) if spec.isdigit() else None


def _http_attempt(
    client: httpx.Client,
    url: str,
    staged: _StagedFile,
    state: _HttpAttemptState,
    options: dict[str, Any],
) -> FetchedFile:
    if state.retry_after:
        time.sleep(state.retry_after)
        state.retry_after = 0.0
    offset = staged.path.stat().st_size
    headers = {}
    if offset and state.resume_validator:
        # If-Range: the server sends the whole file (200) if it changed since the partial.
        headers = {"Range": f"bytes={offset}-", "If-Range": state.resume_validator}
    with (
        _http_errors(url),
        client.stream("GET", redact_url(url), headers=headers, **options) as response,
    ):
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


def _http_fetch(
    url: str, staged: _StagedFile, retry: RetryPolicy, timeout: float, session: HttpSession
) -> FetchedFile:
    state = _HttpAttemptState()
    limits = staged.budget.limits if staged.budget is not None else None
    options = _request_options(url, timeout)
    with session.client(limits) as client:

        def attempt() -> FetchedFile:
            # Retry-After is honoured before the next attempt (on top of the policy's backoff,
            # which with_retries owns), capped like any other backoff.
            state.retry_after = min(state.retry_after, retry.max_backoff_seconds)
            return _http_attempt(client, url, staged, state, options)

        return _retrying(_within(attempt, staged.budget), retry, f"GET {redact_url(url)}")
