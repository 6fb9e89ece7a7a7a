"""Object storage for COGs: one interface (`base`), a local-folder store (`local`, the default)
and an S3 store (`s3`, its client in `s3_client`, what S3 vouches for in `checksums`); keys in
`keys`.

Keys follow the legacy layout `<prefix>/<collection folder>/<file name>`; an upload whose
sha256 is already stored under the same key is skipped. Streams (database dumps) are uploaded
as they are produced, their sha256 recorded beside them as `<key>.sha256`.

Every COG records the STAC item that owns it (collection + item id: S3 metadata `bq-owner`, a
`<file>.owner` sidecar on the local store); an upload refuses to replace an object owned by
another item, so two items (or datasets) that compute the same key cannot overwrite each other.

What a skip, the audit and a backup's verification trust is what the store itself vouches for,
never metadata a client could copy onto other bytes: S3's own SHA-256 checksum of the object
(uploads ask for one; `checksums.py`), or, on the local store, a sidecar written after
its file's last change (a file whose size, mtime or ctime changed since is hashed again).

S3 operations are retried within a total time budget (`STORE_RETRY`), a deadline for each
attempt: botocore's standard retry mode and its connect/read timeouts are fitted inside what
remains (`S3Clients`). An outage of a minute or two is ridden out, a dead endpoint fails in one
budget.

Hrefs (what STAC items point at):
- with a `base_url`, both stores give `<base_url>/<url-quoted key>`;
- without one, the local store gives the absolute file path (static catalogs on disk accept
  absolute paths, and pystac can relativise them when saving a self-contained catalog), and the
  S3 store gives `s3://<bucket>/<key>` (unambiguous whatever the endpoint; set a base URL for
  anything a browser must open).
"""

from bq_pipelines.lib.storage.base import (
    API_WRITER,
    COG_MEDIA_TYPE,
    MIB,
    OWNER_METADATA,
    OWNER_SUFFIX,
    SHA256_SUFFIX,
    ByteStream,
    ObjectOwner,
    ObjectStore,
    StoredObject,
    check_owner,
    same_content,
    sha256_line,
)
from bq_pipelines.lib.storage.keys import object_key, url_join, validate_key, validate_sha256
from bq_pipelines.lib.storage.local import LocalObjectStore
from bq_pipelines.lib.storage.s3 import (
    DEFAULT_MULTIPART_CHUNK_BYTES,
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    S3_MIN_PART_BYTES,
    STORE_RETRY,
    S3ObjectStore,
)
from bq_pipelines.lib.storage.s3_client import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_READ_TIMEOUT_S,
    S3Clients,
    is_transient_s3_error,
    s3_client,
)

__all__ = [
    "API_WRITER",
    "COG_MEDIA_TYPE",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MULTIPART_CHUNK_BYTES",
    "DEFAULT_MULTIPART_THRESHOLD_BYTES",
    "DEFAULT_READ_TIMEOUT_S",
    "MIB",
    "OWNER_METADATA",
    "OWNER_SUFFIX",
    "S3_MIN_PART_BYTES",
    "SHA256_SUFFIX",
    "STORE_RETRY",
    "ByteStream",
    "LocalObjectStore",
    "ObjectOwner",
    "ObjectStore",
    "S3Clients",
    "S3ObjectStore",
    "StoredObject",
    "check_owner",
    "is_transient_s3_error",
    "object_key",
    "s3_client",
    "same_content",
    "sha256_line",
    "url_join",
    "validate_key",
    "validate_sha256",
]
