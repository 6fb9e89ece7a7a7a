"""The S3 object store: objects in one bucket, checksummed by S3 itself, every operation retried
within a time budget."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.utils import ChunksizeAdjuster

from bq_pipelines.lib.errors import StorageError
from bq_pipelines.lib.files import write_atomically
from bq_pipelines.lib.retry import Outage, RetryPolicy, with_retries
from bq_pipelines.lib.storage.base import (
    COG_MEDIA_TYPE,
    MIB,
    OWNER_METADATA,
    SHA256_SUFFIX,
    ByteStream,
    HashingReader,
    ObjectOwner,
    ObjectStore,
    StoredObject,
    check_owner,
    same_content,
    sha256_line,
)
from bq_pipelines.lib.storage.checksums import (
    SINGLE_PUT_MAX_BYTES,
    ExpectedChecksums,
    Reported,
    file_checksums,
)
from bq_pipelines.lib.storage.keys import url_join, validate_key, validate_sha256
from bq_pipelines.lib.storage.s3_client import (
    S3Clients,
    is_not_found,
    is_transient_s3_error,
    s3_reason,
)

logger = logging.getLogger(__name__)

# S3 refuses multipart parts below 5 MiB (except the last one).
S3_MIN_PART_BYTES = 5 * MIB
DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MIB
DEFAULT_MULTIPART_CHUNK_BYTES = 16 * MIB
# Each S3 operation: attempts (each already retried by botocore) until 150 s have passed, so an
# outage of at least a minute is survived whatever the jitter.
STORE_RETRY = RetryPolicy(
    attempts=50, backoff_seconds=1.0, max_backoff_seconds=15.0, budget_seconds=150.0
)
T = TypeVar("T")


class S3ObjectStore(ObjectStore):
    """Objects in one bucket; keys are used as given (the prefix is part of each key).

    Every upload asks S3 for its SHA-256 checksum; `stat` (one HEAD, `ChecksumMode` on) gives
    the sha256 S3 vouches for, never the metadata's alone (`checksums.py`). The owner
    and the sha256 are metadata (`x-amz-meta-bq-owner`, `x-amz-meta-sha256`). Each operation
    is retried within `retry`'s time budget; given `S3Clients`, each attempt's client has
    botocore's attempts and timeouts fitted to what remains of it (botocore's retries inside
    the budget, not on top of it); a client built elsewhere is used as it is. After one
    operation spent its whole budget, the next ones try once until one succeeds (`Outage`).
    A file is one PUT up to `single_put_max_bytes` (S3's 5 GiB: its checksum is then the whole
    file's), multipart above; a stream is multipart above `multipart_threshold_bytes`.
    """

    def __init__(
        self,
        client: S3Clients | BaseClient,
        bucket: str,
        base_url: str | None = None,
        *,
        public_read: bool = False,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        multipart_chunk_bytes: int = DEFAULT_MULTIPART_CHUNK_BYTES,
        single_put_max_bytes: int = SINGLE_PUT_MAX_BYTES,
        retry: RetryPolicy = STORE_RETRY,
    ) -> None:
        if multipart_chunk_bytes < S3_MIN_PART_BYTES:
            raise StorageError(
                f"multipart_chunk_bytes={multipart_chunk_bytes}: S3 parts must be at least "
                f"{S3_MIN_PART_BYTES} bytes"
            )
        # A client built elsewhere is used as it is (its own attempts and timeouts); `S3Clients`
        # are fitted to what remains of each operation's budget.
        self.clients = client if isinstance(client, S3Clients) else None
        self.client = client.client if isinstance(client, S3Clients) else client
        self.bucket = bucket
        self.base_url = base_url
        self.public_read = public_read
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            # A stalled download is redone by our retry, within the budget: s3transfer's own 5
            # attempts would multiply it.
            num_download_attempts=1,
        )
        self.single_put_max_bytes = min(single_put_max_bytes, SINGLE_PUT_MAX_BYTES)
        self.retry = retry
        self.outage = Outage()

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        return StorageError(f"S3 {action} s3://{self.bucket}/{key} failed: {s3_reason(exc)}")

    def _retrying(self, action: str, key: str, operation: Callable[[BaseClient], T]) -> T:
        """`operation(client)` retried on transient errors within the budget, each attempt with
        a client whose calls end within what remains of it; errors propagate as is."""
        return with_retries(
            lambda deadline: operation(self._client_within(deadline.remaining())),
            policy=self.retry,
            is_transient=is_transient_s3_error,
            describe=f"S3 {action} s3://{self.bucket}/{key}",
            outage=self.outage,
        )

    def _client_within(self, seconds: float | None) -> BaseClient:
        return self.client if self.clients is None else self.clients.within(seconds)

    def _metadata(
        self, sha256: str, owner: ObjectOwner | None, expected: ExpectedChecksums
    ) -> dict[str, str]:
        metadata = {"sha256": sha256, **expected.metadata()}
        if owner is not None:
            metadata[OWNER_METADATA] = owner.encode()
        return metadata

    def _part_size(self, size: int) -> int | None:
        """The part size of a file's upload (boto3's, adjusted to S3's part count), or None
        for one PUT."""
        if size <= self.single_put_max_bytes:
            return None
        chunk: int = self.transfer_config.multipart_chunksize
        adjusted: int = ChunksizeAdjuster().adjust_chunksize(chunk, size)
        return adjusted

    def _file_transfer(self, part_size: int | None) -> TransferConfig:
        if part_size is None:
            return TransferConfig(multipart_threshold=SINGLE_PUT_MAX_BYTES + 1)
        return TransferConfig(multipart_threshold=1, multipart_chunksize=part_size)

    def put_file(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        owner: ObjectOwner | None = None,
        content_type: str = COG_MEDIA_TYPE,
        rewrite: bool = False,
    ) -> StoredObject:
        validate_key(key)
        validate_sha256(sha256)
        where = f"s3://{self.bucket}/{key}"
        existing = self.stat(key)
        check_owner(where, existing, owner)
        try:
            size = path.stat().st_size
            if not rewrite and existing is not None and same_content(existing, size, sha256):
                logger.debug("skip %s: the store vouches for the same sha256", where)
                if owner is not None and existing.owner is None:
                    self._replace_metadata(key, owner, content_type)
                owner = owner or existing.owner
                return StoredObject(
                    key, existing.href, size, sha256, False, owner, existing.checksum
                )
            part_size = self._part_size(size)
            # What S3 must report for these bytes, recorded with them (one read of the file).
            actual, expected = file_checksums(path, part_size)
        except OSError as exc:
            raise StorageError(
                f"S3 upload of {path} to {where} failed: {exc.strerror or exc}"
            ) from exc
        if actual != sha256:
            raise StorageError(
                f"S3 upload of {path} to {where}: the file's sha256 is {actual}, not {sha256} "
                "(changed since it was hashed); nothing was uploaded"
            )
        self._upload_file(
            path, key, self._metadata(sha256, owner, expected), content_type, part_size
        )
        stored = self.stat(key)
        if stored is None or stored.sha256 != sha256:
            raise StorageError(
                f"S3 upload of {path} to {where}: the store reports "
                f"{'no object' if stored is None else repr(stored.checksum or 'no checksum')} "
                f"for it, not {expected.sha256!r} (sha256 {sha256})"
            )
        logger.info("uploaded %s (%d bytes)", where, size)
        return StoredObject(key, self.href(key), size, sha256, True, owner, stored.checksum)

    def _upload_file(
        self,
        path: Path,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        part_size: int | None,
    ) -> None:
        extra_args: dict[str, Any] = {
            "ContentType": content_type,
            "Metadata": metadata,
            # S3 computes it (and checks the one botocore sends): what `stat` trusts.
            "ChecksumAlgorithm": "SHA256",
        }
        if self.public_read:
            extra_args["ACL"] = "public-read"
        config = self._file_transfer(part_size)
        try:
            self._retrying(
                "upload",
                key,
                lambda client: client.upload_file(
                    str(path), self.bucket, key, ExtraArgs=extra_args, Config=config
                ),
            )
        except OSError as exc:
            raise StorageError(
                f"S3 upload of {path} to s3://{self.bucket}/{key} failed: {exc.strerror or exc}"
            ) from exc
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("upload", key, exc) from exc

    def _replace_metadata(self, key: str, owner: ObjectOwner, content_type: str) -> None:
        """Record `owner` on an object the store vouches for: a server-side copy onto itself,
        in which S3 computes the SHA-256 of the bytes it holds (one request, up to 5 GiB)."""
        existing = self.stat(key)
        if existing is None or not existing.sha256 or existing.size > SINGLE_PUT_MAX_BYTES:
            why = (
                "is over 5 GiB" if existing and existing.sha256 else "has no sha256 S3 vouches for"
            )
            raise StorageError(
                f"S3 owner update of s3://{self.bucket}/{key}: the object {why}, so it cannot "
                "be copied onto itself (re-run with --force to upload it again)"
            )
        self._copy_in_place(
            key, {"sha256": existing.sha256, OWNER_METADATA: owner.encode()}, content_type
        )

    def _copy_in_place(self, key: str, metadata: dict[str, str], content_type: str) -> None:
        extra_args: dict[str, Any] = {
            "ContentType": content_type,
            "Metadata": metadata,
            "MetadataDirective": "REPLACE",
            "ChecksumAlgorithm": "SHA256",
        }
        if self.public_read:
            extra_args["ACL"] = "public-read"  # a copy gets the default ACL otherwise
        source = {"Bucket": self.bucket, "Key": key}
        try:
            self._retrying(
                "copy",
                key,
                lambda client: client.copy_object(
                    CopySource=source, Bucket=self.bucket, Key=key, **extra_args
                ),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("copy in place of", key, exc) from exc

    def record_owner(self, key: str, owner: ObjectOwner) -> None:
        existing = self.stat(key)
        if existing is None:
            raise StorageError(f"S3 owner update of s3://{self.bucket}/{key}: no such object")
        check_owner(f"s3://{self.bucket}/{key}", existing, owner)
        if existing.owner != owner:
            self._replace_metadata(key, owner, COG_MEDIA_TYPE)

    def checksum_in_place(self, key: str) -> StoredObject | None:
        """A server-side copy of the object onto itself, with its metadata, in which S3
        computes the SHA-256 of the bytes it holds (objects up to 5 GiB)."""
        head = self._head(key)
        if head is None or head["ContentLength"] > SINGLE_PUT_MAX_BYTES:
            return None
        metadata = dict(head.get("Metadata", {}))
        content_type = str(head.get("ContentType") or COG_MEDIA_TYPE)
        logger.info("s3://%s/%s: asking S3 for a checksum of its own", self.bucket, key)
        self._copy_in_place(key, metadata, content_type)
        return self.stat(key)

    def stat(self, key: str) -> StoredObject | None:
        head = self._head(key)
        if head is None:
            return None
        metadata = head.get("Metadata", {})
        reported = Reported.of(head)
        owner = ObjectOwner.decode(metadata.get(OWNER_METADATA, ""))
        return StoredObject(
            key,
            self.href(key),
            head["ContentLength"],
            reported.vouched_sha256(metadata),
            False,
            owner,
            reported.sha256,
            str(head.get("ETag", "")).strip('"') or None,
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        """HeadObject with the store's checksums, or None when there is no such object."""
        validate_key(key)
        try:
            head: dict[str, Any] = self._retrying(
                "head",
                key,
                lambda client: client.head_object(
                    Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
                ),
            )
        except ClientError as exc:
            if not is_not_found(exc):
                raise self._error("head", key, exc) from exc
            if not self._bucket_exists():
                raise StorageError(
                    f"S3 head s3://{self.bucket}/{key} failed: NoSuchBucket: bucket "
                    f"{self.bucket!r} does not exist (check the bucket name and endpoint)"
                ) from exc
            return None
        except BotoCoreError as exc:
            raise self._error("head", key, exc) from exc
        return head

    def put_stream(
        self, stream: ByteStream, key: str, *, content_type: str, private: bool = False
    ) -> StoredObject:
        validate_key(key)
        sidecar = key + SHA256_SUFFIX
        # Parts as boto3 cuts a stream: what S3's composite checksum is made of.
        reader = HashingReader(stream, self.transfer_config.multipart_chunksize)
        acl = {"ACL": "public-read"} if self.public_read and not private else {}
        try:
            # The old checksum stays until the new one replaces it: a failed stream keeps the
            # previous object whole, and a crash in between leaves a checksum that mismatches
            # (a reader refuses the object) rather than one that vouches for it.
            # Multipart above the threshold; s3transfer reads a non-seekable stream chunk by
            # chunk, so memory holds a few parts, never the whole object. A reader that raises
            # aborts the upload: S3 then keeps no object (or the previous one) under `key`.
            # One attempt (a stream is read once), its botocore retries within the budget.
            self._client_within(self.retry.budget_seconds).upload_fileobj(
                reader,
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type, "ChecksumAlgorithm": "SHA256", **acl},
                Config=self.transfer_config,
            )
            self._retrying(
                "upload",
                sidecar,
                lambda client: client.put_object(
                    Bucket=self.bucket,
                    Key=sidecar,
                    Body=sha256_line(reader.sha256, key).encode("ascii"),
                    ContentType="text/plain",
                    **acl,
                ),
            )
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("upload", key, exc) from exc
        logger.info("uploaded s3://%s/%s (%d bytes)", self.bucket, key, reader.size)
        # boto3 reads a stream in parts only from the threshold on.
        multipart = reader.size >= self.transfer_config.multipart_threshold
        expected = reader.digests.expected(multipart)
        return StoredObject(
            key, self.href(key), reader.size, reader.sha256, True, checksum=expected.sha256
        )

    def download(self, key: str, path: Path) -> Path:
        validate_key(key)

        def fetch(client: BaseClient) -> None:
            write_atomically(
                path,
                lambda handle: client.download_fileobj(
                    self.bucket, key, handle, Config=self.transfer_config
                ),
            )

        try:
            self._retrying("download", key, fetch)
        except ClientError as exc:
            if is_not_found(exc):
                raise StorageError(
                    f"S3 download s3://{self.bucket}/{key} failed: no such object"
                ) from exc
            raise self._error("download", key, exc) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._error("download", key, exc) from exc
        return path

    def get_bytes(self, key: str) -> bytes | None:
        validate_key(key)
        try:
            body: bytes = self._retrying(
                "get",
                key,
                lambda client: client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
            )
            return body
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise self._error("get", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("get", key, exc) from exc

    def _bucket_exists(self) -> bool:
        """Tells "no such key" from "no such bucket" after a body-less 404 on HEAD."""
        try:
            self._retrying("head bucket", "", lambda client: client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise self._error("head bucket", "", exc) from exc
        except BotoCoreError as exc:
            raise self._error("head bucket", "", exc) from exc
        return True

    def list_keys(self, prefix: str) -> list[str]:
        def listing(client: BaseClient) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

        try:
            return sorted(self._retrying("list", f"{prefix}*", listing))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", f"{prefix}*", exc) from exc

    def delete(self, key: str) -> None:
        validate_key(key)
        objects = [{"Key": key}, {"Key": key + SHA256_SUFFIX}]  # put_stream's checksum too
        try:
            response = self._retrying(
                "delete",
                key,
                lambda client: client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                ),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", key, exc) from exc
        if response.get("Errors"):
            error = response["Errors"][0]
            raise StorageError(
                f"S3 delete s3://{self.bucket}/{error.get('Key')} failed: "
                f"{error.get('Code')}: {error.get('Message')}"
            )

    def href(self, key: str) -> str:
        validate_key(key)
        if self.base_url:
            return url_join(self.base_url, key)
        return f"s3://{self.bucket}/{key}"

    def gdal_path(self, key: str) -> str:
        return f"/vsis3/{self.bucket}/{validate_key(key)}"
