"""Object storage for COGs: one interface, a local-folder store (default) and an S3 store.

Keys follow the legacy layout `<prefix>/<collection folder>/<file name>`; an upload whose
sha256 is already stored under the same key is skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def object_key(prefix: str, folder: str, file_name: str) -> str:
    """`<prefix>/<folder>/<file_name>` without empty or duplicate slashes."""
    raise NotImplementedError


@dataclass(frozen=True)
class StoredObject:
    key: str
    href: str  # public href (base URL + key), what STAC items point at
    size: int
    sha256: str
    uploaded: bool  # False when skipped because the same checksum was already stored


class ObjectStore(ABC):
    """Where COGs live. Implementations are idempotent: same file + key -> same object."""

    @abstractmethod
    def put_file(self, path: Path, key: str, *, sha256: str,
                 content_type: str = COG_MEDIA_TYPE) -> StoredObject: ...

    @abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The stored object (with its recorded sha256) or None."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def href(self, key: str) -> str:
        """Public href of `key`."""

    @abstractmethod
    def gdal_path(self, key: str) -> str:
        """A path rasterio/GDAL can open (local path or /vsis3/...)."""
