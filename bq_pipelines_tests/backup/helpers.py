"""Helpers of the backup tests: catalog content written through pgstac's own SQL functions or
the publishers, the backup job run in-process, a catalog read whole through the STAC API."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import psycopg

from bq_pipelines.backup.assets import BACKUP_JOB, backup_definitions
from bq_pipelines.backup.dump import write_manifest
from bq_pipelines.backup.manifest import BackupKey, BackupKind, Manifest, catalog_state
from bq_pipelines.lib.hashing import sha256_bytes
from bq_pipelines.lib.storage import ObjectStore, S3ObjectStore, s3_client
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.settings import Settings

# --------------------------------------------------------------------------------- content


def connect_pgstac(dsn: str) -> psycopg.Connection:
    # pgstac's functions expect its schema first on the search_path (its roles set it so).
    return psycopg.connect(dsn, options="-c search_path=pgstac,public", autocommit=True)


def collection_document(collection_id: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "description": f"Test collection {collection_id}",
        "license": "CC-BY-4.0",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[-80.0, 44.0, -57.0, 63.0]]},
            "temporal": {"interval": [["2000-01-01T00:00:00Z", None]]},
        },
    }


def item_document(collection_id: str, item_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection_id,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[-75, 45], [-70, 45], [-70, 50], [-75, 50], [-75, 45]]],
        },
        "bbox": [-75, 45, -70, 50],
        "properties": {"datetime": "2020-01-01T00:00:00Z", **properties},
        "links": [],
        "assets": {
            "data": {
                "href": f"https://example.org/{collection_id}/{item_id}.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }
        },
    }


def add_collection(conn: psycopg.Connection, collection_id: str) -> None:
    conn.execute(
        "SELECT pgstac.create_collection(%s::jsonb)",
        (json.dumps(collection_document(collection_id)),),
    )


def upsert_items(conn: psycopg.Connection, items: Sequence[dict[str, Any]]) -> None:
    """One call, one transaction: pgstac writes all the items or none."""
    conn.execute("SELECT pgstac.upsert_items(%s::jsonb)", (json.dumps(list(items)),))


def fill_catalog(dsn: str, collections: dict[str, int]) -> None:
    """`{collection id: item count}` written into the database."""
    with connect_pgstac(dsn) as conn:
        for collection_id, count in collections.items():
            add_collection(conn, collection_id)
            upsert_items(
                conn,
                [item_document(collection_id, f"{collection_id}_{i:04d}") for i in range(count)],
            )


def database_of(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a static catalog by relative path, with its content; hidden files (the
    publishers' empty lock file) are not catalog content and backups leave them out."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def run_backup_job(
    settings: Settings, day: str, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """The code location's backup job for one partition, with the resources `settings` choose."""
    definitions = dg.Definitions.merge(
        backup_definitions(settings), dg.Definitions(resources=resources_for(settings))
    )
    return definitions.resolve_job_def(BACKUP_JOB).execute_in_process(
        partition_key=day, instance=instance, raise_on_error=False
    )


def _paged(client: httpx.Client, url: str, field: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        response.raise_for_status()
        page = response.json()
        found.extend(page[field])
        next_url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
    return found


def api_catalog(url: str) -> dict[str, Any]:
    """Every collection and item the STAC API serves, as a reader of the API sees them."""
    with httpx.Client(base_url=url, timeout=30) as client:
        collections = _paged(client, "/collections?limit=1000", "collections")
        items = {
            f"{c['id']}/{item['id']}": item
            for c in collections
            for item in _paged(client, f"/collections/{c['id']}/items?limit=1000", "features")
        }
    return {"collections": {c["id"]: c for c in collections}, "items": items}


def s3_store(services_env: dict[str, str], bucket: str) -> S3ObjectStore:
    """The project's S3 store on the moto server, for one bucket."""
    client = s3_client(
        services_env["BQ_S3_ENDPOINT_URL"],
        services_env["BQ_S3_REGION"],
        services_env["AWS_ACCESS_KEY_ID"],
        services_env["AWS_SECRET_ACCESS_KEY"],
    )
    return S3ObjectStore(client, bucket)


# --------------------------------------------------------------------------- stored backups

BACKUP_NAME = "bq_catalog"
DUMP = b"dump"


def manifest_for(key: BackupKey, *, verified: bool | None = True) -> Manifest:
    return Manifest(
        key=key.key,
        kind=key.kind,
        catalog=f"127.0.0.1:5432/{key.name}",
        size=len(DUMP),
        sha256=sha256_bytes(DUMP),
        state=catalog_state(1, [("c", "i")]),
        started_at=f"{key.day.isoformat()}T04:00:00+00:00",
        duration_seconds=0.1,
        verified=verified,
    )


def store_backup(
    store: ObjectStore,
    day: date,
    *,
    name: str = BACKUP_NAME,
    verified: bool | None = True,
    kind: BackupKind = "pgstac",
) -> BackupKey:
    """A backup as the asset leaves it: the dump, its checksum, its manifest."""
    key = BackupKey.of(name, day, kind)
    stored = store.put_stream(io.BytesIO(DUMP), key.key, content_type="application/octet-stream")
    manifest = manifest_for(key, verified=verified)
    write_manifest(store, replace(manifest, store_checksum=stored.checksum))
    return key
