"""S3 sources (s3://bucket/key, any S3-compatible endpoint): head_object and get_object."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import botocore.exceptions

from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.sources.common import (
    CHUNK_SIZE,
    FetchedFile,
    SourceFingerprint,
    _check_size,
    _error,
    _iso,
    _StagedFile,
)
from bq_pipelines.lib.storage import s3_client


def _s3_location(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    key = unquote(parts.path).lstrip("/")
    if not parts.netloc or not key:
        raise _error(url, "an S3 URL must look like s3://bucket/key")
    return parts.netloc, key


def _s3_client(timeout: float, endpoint_url: str | None) -> Any:
    # The project's one S3 client configuration, with one attempt: our retry policy owns
    # retrying, and botocore's own retries would multiply the attempts.
    return s3_client(
        endpoint_url, None, max_attempts=1, connect_timeout=timeout, read_timeout=timeout
    )


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
