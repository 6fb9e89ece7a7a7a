"""The production stack as the deploy tests see it: its files (deploy/compose.yaml,
.env.example), docker-compose run on them, and the local PostgreSQL its Dagster instance uses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY_DIR / "compose.yaml"
ENV_EXAMPLE = DEPLOY_DIR / ".env.example"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# What an operator writes for the values whose shape the code checks (URLs, lists of URLs).
URL_VALUES = {
    "BQ_PUBLIC_BASE_URL": "https://data.example.org/bq-io",
    "BQ_SOURCE_BASE_URLS": "",
    "BQ_API_ALLOWED_SOURCES": "https://data.example.org/rasters/",
    "BQ_API_STAC_API_ALIASES": "https://stac.example.org/",
    "BQ_DAGSTER_UI_URL": "https://stac.example.org/dagster",
    "BQ_TILER_URL": "https://stac.example.org/tiler",
}


def env_example() -> dict[str, str]:
    """KEY=value lines of .env.example (comments and blank lines skipped)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=value"
            values[key.strip()] = value.strip()
    return values


def filled_env(tmp_path: Path, **overrides: str) -> Path:
    """.env.example with placeholder secrets, as an operator fills it."""
    values = env_example()
    for key, value in values.items():
        if not value:
            values[key] = f"test-{key.lower().replace('_', '-')}"
    values["BQ_S3_ENDPOINT_URL"] = "https://s3.example.org"
    values.update(overrides)
    path = tmp_path / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is not installed: run `make deploy-tools`")
    return subprocess.run(
        [executable, "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def count_rows(database: str, table: str) -> int:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        return int(row.fetchone()[0])  # type: ignore[index]


def sessions_of(database: str) -> set[int]:
    """Backend pids connected to `database` right now (pg_stat_activity)."""
    with psycopg.connect(PG_ADMIN_DSN) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return {int(pid) for (pid,) in rows}
