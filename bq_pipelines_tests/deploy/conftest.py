"""Fixtures of the deploy/ tests: the production Dagster instance (deploy/dagster.yaml) on a
fresh database of the local PostgreSQL, with its settings from the environment as in the stack.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bq_pipelines_testkit.services import stack_database_prefix
from bq_pipelines_tests.deploy.stack import DEPLOY_DIR, PG_ADMIN_DSN


@pytest.fixture
def dagster_database() -> Iterator[str]:
    """A new, empty database for Dagster's storage, dropped afterwards."""
    name = f"{stack_database_prefix()}dagster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def production_instance_env(
    tmp_path: Path, dagster_database: str, services_env: dict[str, str], s3_bucket: str
) -> dict[str, str]:
    """DAGSTER_HOME holding deploy/dagster.yaml as it is, and the variables it reads
    (deploy/.env.example), pointed at the local PostgreSQL and the moto S3 server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_DIR / "dagster.yaml", home / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",  # trust authentication on this machine
        "DAGSTER_PG_DB": dagster_database,
        "DAGSTER_MAX_CONCURRENT_RUNS": "2",
        "DAGSTER_COMPUTE_LOGS_BUCKET": s3_bucket,
        "DAGSTER_COMPUTE_LOGS_PREFIX": "dagster/compute-logs",
        "BQ_S3_ENDPOINT_URL": services_env["BQ_S3_ENDPOINT_URL"],
        "BQ_S3_REGION": services_env["BQ_S3_REGION"],
        "AWS_ACCESS_KEY_ID": services_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": services_env["AWS_SECRET_ACCESS_KEY"],
    }
