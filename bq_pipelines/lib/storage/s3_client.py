"""The project's one S3 client configuration, and what its errors mean (transient or not)."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import boto3
import botocore.loaders
import botocore.session
from boto3.exceptions import Boto3Error
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError as S3TransferRetriesExceededError

DEFAULT_MAX_ATTEMPTS = 5
# Short enough that a hung endpoint is noticed within the retry budget; a read timeout applies
# to each socket read, not to a whole transfer, so big uploads are not cut short.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ClientLimits:
    """How long one S3 call may take: botocore's attempts (the first included) and the
    connect/read timeouts of each."""

    attempts: int
    connect_timeout: float
    read_timeout: float

    def worst_case(self) -> float:
        """Seconds a call may last against an endpoint that never answers (or only with
        errors): every attempt timing out, and botocore's backoff between them."""
        per_request = self.connect_timeout + self.read_timeout
        return self.attempts * per_request + botocore_backoff_bound(self.attempts)


def botocore_backoff_bound(attempts: int) -> float:
    """The longest botocore's standard mode waits between `attempts` attempts: a random
    fraction of min(2^i s, 20 s) before retry i (throttling's scale; other errors wait 1/20 of
    it). An `x-amz-retry-after` header may add 5 s a retry: S3 sends none."""
    return float(sum(min(2**i, 20) for i in range(attempts - 1)))


@dataclass(frozen=True)
class S3Clients:
    """The project's one S3 client configuration (production resources and tests alike):
    botocore's standard retry mode (backoff on throttling, 5xx, connection errors) and short
    connect/read timeouts, and clients of it that fit in a time budget.

    `S3ObjectStore` retries each operation within a budget; the call of each of its attempts
    is made with `within(remaining)`: botocore's attempts and timeouts cut so that all of them
    end within what remains of the budget, so botocore's retries never multiply the budget.
    The read timeout applies to each socket read, not to a whole transfer: an upload or a
    download that keeps moving is never cut short, one that stalls is.

    `max_attempts` counts every attempt, the first included (botocore's `total_max_attempts`).
    Keys left None use boto3's credential chain (environment, profile, instance role). A
    custom endpoint (moto, MinIO...) gets path-style addressing: its hostname has no
    per-bucket DNS.
    """

    endpoint_url: str | None
    region: str | None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S

    @property
    def limits(self) -> ClientLimits:
        return ClientLimits(self.max_attempts, self.connect_timeout, self.read_timeout)

    @functools.cached_property
    def client(self) -> BaseClient:
        """The client with the configured limits."""
        return self._make(self.limits)

    def within(self, seconds: float | None) -> BaseClient:
        """A client whose calls end within `seconds` (None: the configured client)."""
        limits = self.limits_within(seconds)
        return self.client if limits == self.limits else self._fitted(limits)

    def limits_within(self, seconds: float | None) -> ClientLimits:
        """The configured limits, or fewer botocore attempts, then (down to one attempt)
        shorter timeouts in the same proportion, whose worst case fits in `seconds`."""
        if seconds is None or self.limits.worst_case() <= seconds:
            return self.limits
        full_request = self.connect_timeout + self.read_timeout
        attempts = self.max_attempts
        while attempts > 1 and _per_request(seconds, attempts) < full_request:
            attempts -= 1
        share = _per_request(seconds, attempts)
        if share >= full_request:
            return ClientLimits(attempts, self.connect_timeout, self.read_timeout)
        scale = _step_down(share) / full_request
        return ClientLimits(1, self.connect_timeout * scale, self.read_timeout * scale)

    @functools.lru_cache(maxsize=8)  # noqa: B019 (a few per store, for the store's life)
    def _fitted(self, limits: ClientLimits) -> BaseClient:
        return self._make(limits)

    @functools.cached_property
    def _session(self) -> tuple[boto3.session.Session, threading.Lock]:
        # One session for every client of this configuration (its credential chain resolved
        # once), so a client fitted to a short remaining time is made in milliseconds (a
        # session is not thread-safe: clients are made one at a time).
        session = botocore.session.get_session()
        data_path = session.get_config_variable("data_path")  # AWS_DATA_PATH, as botocore's
        session.register_component("data_loader", _service_models(data_path))
        return boto3.session.Session(botocore_session=session), threading.Lock()

    def _make(self, limits: ClientLimits) -> BaseClient:
        config = Config(
            retries={"mode": "standard", "total_max_attempts": limits.attempts},
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            connect_timeout=limits.connect_timeout,
            read_timeout=limits.read_timeout,
        )
        session, lock = self._session
        with lock:
            return session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                config=config,
            )


@functools.cache
def _service_models(data_path: str | None) -> botocore.loaders.Loader:
    """botocore's loader of service models, one per process (and data path): each session
    loaded and parsed S3's models again (~90 ms of CPU for a store's first client against
    ~7 ms). A loader only reads model files and caches what it read."""
    return botocore.loaders.create_loader(data_path)


def _per_request(seconds: float, attempts: int) -> float:
    return (seconds - botocore_backoff_bound(attempts)) / attempts


def _step_down(seconds: float) -> float:
    """The largest of 0.01, 0.02, 0.05, 0.1 ... 500 s not above `seconds` (0.01 at least): a
    few clients serve every budget."""
    steps = [unit * 10.0**power for power in range(-2, 3) for unit in (1, 2, 5)]
    return max([step for step in steps if step <= seconds] or [steps[0]])


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
    """A client of the project's one configuration (`S3Clients`), with no time budget."""
    clients = S3Clients(
        endpoint_url,
        region,
        access_key_id,
        secret_access_key,
        max_attempts=max_attempts,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return clients.client


def s3_reason(exc: Exception) -> str:
    """What S3 said, without request details: ClientError carries code + message only."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        message = error.get("Message") or exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", ""
        )
        return f"{code}: {message}"
    if isinstance(exc, Boto3Error) and isinstance(exc.__context__, ClientError):
        return s3_reason(exc.__context__)
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


def is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # head_object has no body: a missing key is a bare 404 (code "404"), but a missing bucket
    # is a 404 too; only the former means "no such object".
    return error.get("Code") in ("404", "NoSuchKey", "NotFound") and status == 404
