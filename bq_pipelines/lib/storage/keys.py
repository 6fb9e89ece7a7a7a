"""Object keys: `<prefix>/<folder>/<file name>`, checked so that no key escapes a store's root."""

from __future__ import annotations

import re
from urllib.parse import quote

from bq_pipelines.lib.errors import StorageError

SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")


def key_segments(field: str, value: str, *, allow_empty: bool, allow_slash: bool) -> list[str]:
    """The `/`-separated segments of one key part, rejecting anything that could escape a root."""
    if "\\" in value:
        raise StorageError(f"invalid object key {field}={value!r}: backslashes are not allowed")
    if _CONTROL_CHARS_RE.search(value):
        raise StorageError(f"invalid object key {field}={value!r}: control characters")
    stripped = value.strip("/")
    if not stripped:
        if allow_empty:
            return []
        raise StorageError(f"invalid object key {field}={value!r}: must not be empty")
    segments = stripped.split("/")
    if not allow_slash and len(segments) > 1:
        raise StorageError(f"invalid object key {field}={value!r}: must not contain '/'")
    for segment in segments:
        if segment == "" or segment.strip() == "":
            raise StorageError(f"invalid object key {field}={value!r}: empty path segment")
        if segment in (".", ".."):
            raise StorageError(f"invalid object key {field}={value!r}: '{segment}' segment")
    return segments


def object_key(prefix: str, folder: str, file_name: str) -> str:
    """`<prefix>/<folder>/<file_name>` without empty or duplicate slashes.

    `prefix` may be empty (no prefix); `prefix` and `folder` may hold several segments
    (`io/chelsa`); outer slashes are dropped. Raises StorageError naming the bad field for
    `..`/`.` segments, empty segments, backslashes or control characters.
    """
    segments = [
        *key_segments("prefix", prefix, allow_empty=True, allow_slash=True),
        *key_segments("folder", folder, allow_empty=False, allow_slash=True),
        *key_segments("file_name", file_name, allow_empty=False, allow_slash=False),
    ]
    return "/".join(segments)


def validate_key(key: str) -> str:
    """`key` itself, if it is a clean relative key (the rules of `object_key`, outer slashes
    included: a key given whole must already be normalised)."""
    if key != key.strip("/"):
        raise StorageError(f"invalid object key key={key!r}: leading or trailing '/'")
    key_segments("key", key, allow_empty=False, allow_slash=True)
    return key


def validate_sha256(sha256: str) -> str:
    if not SHA256_RE.fullmatch(sha256):
        raise StorageError(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
    return sha256


def url_join(base_url: str, key: str) -> str:
    return f"{base_url.rstrip('/')}/{quote(key, safe='/')}"
