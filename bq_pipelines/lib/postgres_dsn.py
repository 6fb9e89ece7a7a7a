"""PostgreSQL connection strings read without echoing them (they may hold a password)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bq_pipelines.lib.errors import ConfigError


def parse_dsn(dsn: str, variable: str = "BQ_PGSTAC_DSN") -> dict[str, Any]:
    """The parameters of a libpq connection string (URL or key=value); ConfigError naming the
    variable, never echoing the value (it may hold a password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's reason quotes pieces of the value, and a piece may be the password.
        raise ConfigError(
            f"{variable}: not a PostgreSQL connection string "
            "(postgresql://user@host:port/database, or key=value pairs)"
        ) from None
    if not params.get("dbname"):
        raise ConfigError(f"{variable}: names no database (add /<database> or dbname=...)")
    return params
