"""Does the object store hold what the catalog says? The comparison behind skip-unchanged and
the drift audit.

A published item's asset names its object (href), its size (`file:size`) and its sha256
(`file:checksum`, a multihash); the store says the object's size, the sha256 it vouches for
itself (S3's own checksum, never metadata a client could copy; see lib/storage/) and its
owner (collection + item id). One HEAD (or stat) per object compares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bq_pipelines.lib.pipeline import ItemPlan, Services
from bq_pipelines.lib.preview import thumbnail_file_name
from bq_pipelines.lib.storage import ObjectOwner, ObjectStore, object_key

SHA256_MULTIHASH_PREFIX = "1220"


class Drift(StrEnum):
    """Why an object does not match its item."""

    MISSING_ITEM = "missing_item"  # the catalog lacks the item
    MISSING_OBJECT = "missing_object"  # the item's object is not in the store
    CHANGED = "changed"  # size or sha256 differ from the item's
    FOREIGN = "foreign_owner"  # the object belongs to another item
    ELSEWHERE = "href_elsewhere"  # the item does not point at the object its plan names


@dataclass(frozen=True)
class ObjectDrift:
    item_id: str
    key: str
    drift: Drift
    detail: str

    def __str__(self) -> str:
        return f"{self.item_id} ({self.key}): {self.drift}: {self.detail}"


def owner_of(plan: ItemPlan) -> ObjectOwner:
    return ObjectOwner(plan.collection_id, plan.item_id, plan.writer)


def plan_key(plan: ItemPlan, services: Services) -> str:
    return object_key(services.object_prefix, plan.folder, plan.file_name)


def thumbnail_key(plan: ItemPlan, services: Services) -> str:
    return object_key(services.object_prefix, plan.folder, thumbnail_file_name(plan.file_name))


def checksum_sha256(checksum: object) -> str | None:
    """The sha256 hex digest of a `file:checksum` multihash, or None if it is not one."""
    if isinstance(checksum, str) and checksum.startswith(SHA256_MULTIHASH_PREFIX):
        digest = checksum[len(SHA256_MULTIHASH_PREFIX) :].lower()
        if len(digest) == 64:
            return digest
    return None


def object_drift(
    item: Mapping[str, Any], key: str, owner: ObjectOwner, store: ObjectStore
) -> ObjectDrift | None:
    """How the object `key` differs from what `item` says of it, or None when it matches.

    An object that matches but records no owner (uploaded before owners were recorded) is
    claimed: its owner is recorded now. Not when the item states no checksum (a legacy item,
    adopted as published): nothing then proves the content is the item's, and recording an
    owner rewrites an S3 object, changing the ETag its adoption recorded.
    """
    href = store.href(key)
    assets = item.get("assets") or {}
    asset = next((a for a in assets.values() if a.get("href") == href), None)
    if asset is None:
        hrefs = sorted(str(a.get("href")) for a in assets.values())
        return ObjectDrift(owner.item, key, Drift.ELSEWHERE, f"asset hrefs {hrefs}, not {href}")
    stored = store.stat(key)
    if stored is None:
        return ObjectDrift(owner.item, key, Drift.MISSING_OBJECT, f"{href} does not exist")
    size = asset.get("file:size")
    if size is not None and stored.size != size:
        detail = f"{stored.size} bytes stored, the item says {size}"
        return ObjectDrift(owner.item, key, Drift.CHANGED, detail)
    expected = checksum_sha256(asset.get("file:checksum"))
    if expected is not None and not stored.sha256:
        # Written before uploads asked the store for a checksum: have it compute one.
        stored = store.checksum_in_place(key) or stored
    if expected is not None and stored.sha256 != expected:
        found = stored.sha256 or "none the store vouches for"
        detail = f"sha256 {found}, the item says {expected}"
        return ObjectDrift(owner.item, key, Drift.CHANGED, detail)
    if stored.owner is None:
        if expected is not None:
            store.record_owner(key, owner)
    elif stored.owner != owner:
        return ObjectDrift(owner.item, key, Drift.FOREIGN, f"owned by item {stored.owner}")
    return None


def item_drift(item: Mapping[str, Any], plan: ItemPlan, services: Services) -> ObjectDrift | None:
    """How the objects of `plan` (its COG, and its thumbnail when it has one) differ from
    what the published `item` says of them, or None."""
    drift = object_drift(item, plan_key(plan, services), owner_of(plan), services.store)
    if drift is None and plan.thumbnail:
        drift = object_drift(item, thumbnail_key(plan, services), owner_of(plan), services.store)
    return drift


def published_drift(plans: Sequence[ItemPlan], services: Services) -> list[ObjectDrift]:
    """What keeps `plans` from being "already published": items missing from the catalog, and
    objects missing, changed or owned by another item. Empty when every item and object is
    what the catalog says (one search per 500 items, one HEAD per object)."""
    if not plans:
        return []
    found = services.publisher.get_items(plans[0].collection_id, [p.item_id for p in plans])
    drifts = []
    for plan in plans:
        key = plan_key(plan, services)
        item = found.get(plan.item_id)
        if item is None:
            drifts.append(ObjectDrift(plan.item_id, key, Drift.MISSING_ITEM, "not in the catalog"))
            continue
        drift = item_drift(item, plan, services)
        if drift is not None:
            drifts.append(drift)
    return drifts
