"""The machine's PostgreSQL made ready for a stack: the PostGIS package, the stack's database
with its extensions and the pgstac schema; a disposable stack's databases dropped."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from local_stack.stacks import (
    HOST,
    PG_PORT,
    PG_USER,
    ServicesError,
    Stack,
    child_env,
    venv_executable,
)

ADMIN_DSN = f"postgresql://{PG_USER}@{HOST}:{PG_PORT}/postgres"
PG_EXTENSIONS = ("postgis", "btree_gist", "unaccent")
POSTGIS_PACKAGE = "postgresql-15-postgis-3"
APT_LOCK_TIMEOUT_S = 300


def pgstac_version(stack: Stack) -> str | None:
    import psycopg

    try:
        with psycopg.connect(stack.dsn, connect_timeout=3) as conn:
            row = conn.execute("SELECT pgstac.get_version()").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


def ensure_postgis_package() -> str:
    installed = subprocess.run(
        ["dpkg", "-s", POSTGIS_PACKAGE], capture_output=True, text=True, check=False
    )
    if installed.returncode == 0:
        return f"{POSTGIS_PACKAGE}: installed"
    if os.geteuid() != 0:
        raise ServicesError(
            f"{POSTGIS_PACKAGE} is missing and installing it needs root: "
            f"sudo apt-get install -y {POSTGIS_PACKAGE}"
        )
    apt_env = child_env({"DEBIAN_FRONTEND": "noninteractive"})
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", POSTGIS_PACKAGE],
    ):
        # Wait for the dpkg lock instead of failing when another apt run holds it.
        argv[1:1] = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"]
        run_checked(argv, env=apt_env)
    return f"{POSTGIS_PACKAGE}: installed now"


def run_checked(
    argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> None:
    """Run a command; ServicesError with the tail of its output when it fails."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServicesError(
            f"{shlex.join(argv)} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def ensure_catalog_database(stack: Stack) -> str:
    import psycopg
    from psycopg import sql

    try:
        # CREATE DATABASE cannot run inside a transaction block.
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (stack.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(stack.database)))
        with psycopg.connect(stack.dsn, autocommit=True, connect_timeout=5) as conn:
            for extension in PG_EXTENSIONS:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension))
                )
    except psycopg.Error as exc:
        raise ServicesError(
            f"preparing database {stack.database} on {HOST}:{PG_PORT} failed: {exc}. "
            f"Is PostgreSQL 15 running with trust auth for {PG_USER}?"
        ) from exc
    state = "exists" if exists else "created"
    return f"{stack.database}: {state}, extensions {', '.join(PG_EXTENSIONS)}"


def drop_stack_databases(stack: Stack) -> str:
    """A disposable stack's database and every one named `<it>_...` (the copies tests make
    beside it: restores, templates, test databases), whoever is connected to them."""
    import psycopg
    from psycopg import sql

    if not stack.disposable:
        raise ServicesError(f"the {stack.name} stack's database {stack.database} is never dropped")
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = %s "
                    "OR starts_with(datname, %s)",
                    (stack.database, f"{stack.database}_"),
                )
            ]
            for name in names:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise ServicesError(f"dropping database {stack.database} failed: {exc}") from exc
    others = f" and {len(names) - 1} named after it" if len(names) > 1 else ""
    return f"{stack.database}: dropped{others}" if names else f"{stack.database}: none to drop"


def migrate_pgstac(stack: Stack) -> str:
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    run_checked([venv_executable("pypgstac"), "migrate", "--dsn", stack.dsn], cwd=stack.run_dir)
    return f"pgstac: migrated ({pgstac_version(stack) or 'version unknown'})"
