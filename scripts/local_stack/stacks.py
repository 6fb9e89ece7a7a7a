"""A stack's names and places: its database, ports' variables, state folder and env file, the
machine's PostgreSQL and the S3 credentials every server shares, and what a service is."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = PROJECT_ROOT / ".bq"
# Not the venv's resolved interpreter: console scripts live next to the venv's python symlink.
VENV_BIN = Path(sys.executable).parent

HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"

S3_BUCKET = "bq-io"
S3_PREFIX = "io"
S3_REGION = "us-east-1"
# Moto accepts any key pair; fixed, recognisable values so nobody mistakes them for real ones.
S3_ACCESS_KEY_ID = "bq-local-test"
S3_SECRET_ACCESS_KEY = "bq-local-test-secret"
# stac-fastapi-pgstac's PostgresSettings requires PGPASSWORD (a str with no default); trust auth
# ignores it, so any placeholder does.
PG_PASSWORD_PLACEHOLDER = "trust-auth-unused"

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# The environment variable choosing each server's port of the user's stack.
PORT_VARIABLES = {"moto": "BQ_S3_PORT", "stac-api": "BQ_STAC_API_PORT", "tiler": "BQ_TILER_PORT"}

Ports = tuple[int, int, int]  # moto, stac-api, tiler


@dataclass(frozen=True)
class Stack:
    """One stack: its database, where it keeps its PID files, logs and env file."""

    name: str
    database: str
    state_dir: Path
    env_file: Path
    # A disposable stack's database is made anew and dropped with it, and its ports are its own:
    # it never uses a server it did not start.
    disposable: bool

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_USER}@{HOST}:{PG_PORT}/{self.database}"


def user_stack() -> Stack:
    # Several checkouts sharing this PostgreSQL each name their own catalog (BQ_CATALOG_DB).
    database = os.environ.get("BQ_CATALOG_DB") or "bq_catalog"
    return Stack("user", database, STATE_DIR, STATE_DIR / "services.env", disposable=False)


def test_stack() -> Stack:
    database = f"bq_test_{checkout_hash()}"
    return Stack("test", database, STATE_DIR / "test-stack", STATE_DIR / "test-stack.env", True)


def checkout_hash() -> str:
    """8 hex digits naming this checkout (its absolute path): its test stack's name and ports."""
    return hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:8]


STACKS: dict[str, Callable[[], Stack]] = {"user": user_stack, "test": test_stack}


@dataclass(frozen=True)
class Service:
    """A server this script owns: how to start it, recognise it and ask whether it answers."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    answers: Callable[[int], bool]
    stack: Stack

    @property
    def pid_file(self) -> Path:
        return self.stack.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.stack.log_dir / f"{self.name}.log"


class ServicesError(RuntimeError):
    """A service could not be prepared or started; the message says which and why."""


def venv_executable(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise ServicesError(
            f"{path} not found: install the dev extras into this venv (pip install -e '.[dev]')"
        )
    return str(path)


def local_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
