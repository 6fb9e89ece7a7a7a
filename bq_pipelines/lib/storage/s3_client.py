"""The project's one S3 client configuration, and what its errors mean (transient or not)."""

from __future__ import annotations

import boto3
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
    """The one S3 client configuration of the project (production resources and tests alike):
    botocore's standard retry mode (backoff on throttling, 5xx, connection errors) and short
    connect/read timeouts. `S3ObjectStore` adds a total time budget on top.

    `max_attempts` counts every attempt, the first included (botocore's `total_max_attempts`).

    Keys left None use boto3's credential chain (environment, profile, instance role).
    A custom endpoint (moto, MinIO...) gets path-style addressing: its hostname has no
    per-bucket DNS.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


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
