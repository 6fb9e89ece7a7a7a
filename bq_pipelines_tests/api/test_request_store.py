"""The request store's table as an older release created it (no attempt columns) is upgraded in
place when a new release opens it, on SQLite and on PostgreSQL: requests already stored keep
their status and start at attempt 1."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from bq_pipelines.ingestion.database import create_engine
from bq_pipelines.ingestion.store import RequestStore

# The table of the first release, as it was created.
OLD_TABLE = """
CREATE TABLE ingestion_requests (
    seq {seq} PRIMARY KEY,
    id VARCHAR(36) NOT NULL UNIQUE,
    idempotency_key VARCHAR(200) UNIQUE,
    collection_id VARCHAR(200) NOT NULL,
    item_id VARCHAR(200) NOT NULL,
    request {json} NOT NULL,
    state VARCHAR(16) NOT NULL,
    operation VARCHAR(40) NOT NULL,
    step VARCHAR(40),
    status VARCHAR(8) NOT NULL,
    description TEXT NOT NULL,
    run_id VARCHAR(64),
    item_url TEXT,
    created_at {moment} NOT NULL,
    updated_at {moment} NOT NULL
)
"""


def test_an_older_table_gets_the_attempt_columns(database_url: str):
    engine = create_engine(database_url)
    sqlite = engine.dialect.name == "sqlite"
    old_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            OLD_TABLE.format(
                seq="INTEGER" if sqlite else "BIGSERIAL",
                json="JSON",
                moment="DATETIME" if sqlite else "TIMESTAMP WITH TIME ZONE",
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO ingestion_requests (id, collection_id, item_id, request, state,"
                " operation, status, description, created_at, updated_at) VALUES (:id, 'c', 'i',"
                " :request, 'accepted', 'RECEIVED', 'ok', 'waiting', :now, :now)"
            ),
            {"id": old_id, "request": '{"name": "i"}', "now": now},
        )
    engine.dispose()

    with RequestStore(database_url) as store:
        old = store.get(old_id)
        assert old is not None and old.state == "accepted"
        assert (old.attempt, old.retries) == (1, ())
        assert [r.id for r in store.pending(10)] == [old_id]
        new_id, _ = store.add({"name": "j"}, collection_id="c", item_id="j")
        assert store.start(new_id, "run-1", 1)
    with RequestStore(database_url) as again:  # opened again: nothing left to add
        started = again.get(new_id)
        assert started is not None and started.state == "running" and started.attempt == 1


def test_a_sqlite_store_left_readable_by_others_is_narrowed(tmp_path: Path):
    database = tmp_path / "requests.sqlite"
    with RequestStore(f"sqlite:///{database}") as store:
        store.add({"name": "i"}, collection_id="c", item_id="i")
    for path in tmp_path.glob("requests.sqlite*"):
        path.chmod(0o644)  # as an older release left them

    with RequestStore(f"sqlite:///{database}") as store:
        assert store.count() == 1
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.glob("req*")}
    assert modes and set(modes.values()) == {"0o600"}, modes
