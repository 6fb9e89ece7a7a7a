"""Publishing STAC: a self-contained static catalog on disk (default) or a STAC API with
the Transactions extension. Both are idempotent: publishing the same item twice is one item."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Literal

import pystac

PublishOutcome = Literal["created", "updated", "unchanged"]


class Publisher(ABC):
    @abstractmethod
    def upsert_collection(self, collection: pystac.Collection) -> PublishOutcome: ...

    @abstractmethod
    def ensure_collection(self, collection: pystac.Collection) -> PublishOutcome:
        """Create the collection if missing; leave an existing one untouched."""

    @abstractmethod
    def upsert_item(self, item: pystac.Item) -> PublishOutcome: ...

    @abstractmethod
    def get_collection(self, collection_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def iter_items(self, collection_id: str) -> Iterator[dict[str, Any]]:
        """Every item of a collection, as dicts (paged for STAC APIs)."""

    @abstractmethod
    def delete_item(self, collection_id: str, item_id: str) -> None: ...
