"""The production Dagster instance's storage (deploy/dagster.yaml, `storage: custom:`):
dagster-postgres, with each process keeping its connection in a pool.

dagster-postgres opens and closes a connection for every write by default (SQLAlchemy's
`NullPool`, so that an idle instance holds none). A batched run writes ~9 events per partition
(4 planned materializations at the start, 4 materializations, a share of the step events): with a
connection per event, Dagster's overhead on tiny partitions was 2.2x a plain loop over the same
calls; pooled, 1.5x (bench/bench_backfill.py, bench/RESULTS.md). The pool is the one
dagster-webserver already switches to (`optimize_for_webserver`): one connection kept per
storage, overflow connections closed when returned; the kept ones close with their process (the
instance's `dispose` leaves dagster-postgres' engines alone).
"""

from __future__ import annotations

from typing import Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

# Connections over the one kept, for threads writing at once (the daemon's); closed when returned.
POOL_MAX_OVERFLOW = 10
# A kept connection is replaced after this long (server-side idle timeouts, failovers).
POOL_RECYCLE_SECONDS = 3600
# No statement timeout (PostgreSQL's default); the webserver sets its own when it starts.
NO_STATEMENT_TIMEOUT = 0


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres' runs, event logs and schedules, the run and event log storages holding
    one pooled connection per process instead of one connection per write."""

    def __init__(self, postgres_url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(postgres_url, *args, **kwargs)
        for storage in (self.run_storage, self.event_log_storage):
            storage.optimize_for_webserver(
                statement_timeout=NO_STATEMENT_TIMEOUT,
                pool_recycle=POOL_RECYCLE_SECONDS,
                max_overflow=POOL_MAX_OVERFLOW,
            )

    @classmethod
    def from_config_value(  # type: ignore[override]  # dagster-postgres types it with a TypedDict
        cls, inst_data: Any, config_value: dict[str, Any]
    ) -> PooledPostgresStorage:
        # dagster-postgres' own builds a DagsterPostgresStorage whatever the class; the config
        # schema (`config_type`, dagster-postgres' `postgres_db`/`postgres_url`) is inherited.
        return cls(
            pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
        )
