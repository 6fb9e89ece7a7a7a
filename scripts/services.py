"""Start, stop and inspect a real local stack for dev and tests: moto S3, stac-fastapi-pgstac and
titiler-pgstac on a pgstac database of the machine's PostgreSQL.

Usage: `python scripts/services.py up|down|status [--stack user|test]` (the project venv's python).

- `user` (the default; `make services`): database `bq_catalog` (BQ_CATALOG_DB) and ports
  9010/8082/8084 (BQ_S3_PORT, BQ_STAC_API_PORT, BQ_TILER_PORT); writes `.bq/services.env`, which
  `. .bq/services.env` points the project at. `down` stops the servers and keeps the database.
- `test` (`make test`): this checkout's tests' own stack, never a user's: database
  `bq_test_<8 hex>` and three ports in 20000-29999, both derived from the checkout's path (the
  ports move on while taken); writes `.bq/test-stack.env`, keeps its PID files and logs under
  `.bq/test-stack/`. `up` begins on a new database when none of its servers runs; `down` drops
  it, with every database named after it (the copies tests make beside it).

`up` is idempotent: it installs PostGIS if missing, prepares the database (extensions + pgstac
migrations), starts or reuses the three servers and writes the stack's env file. `down` stops only
the processes whose PID files `up` wrote. PostgreSQL itself is the machine's (127.0.0.1:5432,
trust auth) and is never started or stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bq_pipelines.lib.files import PRIVATE_FILE_MODE, exclusive_lock, write_text_atomically
from bq_pipelines.lib.waiting import WaitTimeout, wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = PROJECT_ROOT / ".bq"
# Not the venv's resolved interpreter: console scripts live next to the venv's python symlink.
VENV_BIN = Path(sys.executable).parent

HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
ADMIN_DSN = f"postgresql://{PG_USER}@{HOST}:{PG_PORT}/postgres"
PG_EXTENSIONS = ("postgis", "btree_gist", "unaccent")
POSTGIS_PACKAGE = "postgresql-15-postgis-3"

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
APT_LOCK_TIMEOUT_S = 300
LOG_TAIL_LINES = 30
# The environment variable choosing each server's port of the user's stack.
PORT_VARIABLES = {"moto": "BQ_S3_PORT", "stac-api": "BQ_STAC_API_PORT", "tiler": "BQ_TILER_PORT"}
USER_PORTS = {"moto": 9010, "stac-api": 8082, "tiler": 8084}
# The test stack's three consecutive ports: a slot of 20000-29999 picked from the checkout's
# hash, the next slots while one of its ports is taken. Below Linux's ephemeral range (32768+).
TEST_PORTS_FIRST = 20000
TEST_PORT_SLOTS = 3333
TEST_PORT_TRIES = 50

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


# ---------------------------------------------------------------------------------------------
# Configuration


def port_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ServicesError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServicesError(f"{name}={port} is out of range 1..65535")
    return port


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


def pg_env(stack: Stack) -> dict[str, str]:
    # stac-fastapi-pgstac 7.2 and titiler-pgstac 3.2 read their database from these PG*
    # variables (PostgresSettings, pydantic-settings, case-insensitive), all five required.
    return {
        "PGHOST": HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": PG_USER,
        "PGPASSWORD": PG_PASSWORD_PLACEHOLDER,
        "PGDATABASE": stack.database,
    }


def moto_service(stack: Stack, port: int) -> Service:
    argv = [venv_executable("moto_server"), "-H", HOST, "-p", str(port)]
    return Service("moto", port, argv, child_env({}), moto_answers, stack)


def uvicorn_argv(app: str, port: int, *options: str) -> list[str]:
    return [venv_executable("uvicorn"), app, *options, "--host", HOST, "--port", str(port)]


def stac_service(stack: Stack, port: int) -> Service:
    env = {**pg_env(stack), "ENABLE_TRANSACTIONS_EXTENSIONS": "true"}
    argv = uvicorn_argv("stac_fastapi.pgstac.app:create_app", port, "--factory")
    return Service("stac-api", port, argv, child_env(env), stac_api_answers, stack)


def tiler_service(stack: Stack, port: int) -> Service:
    # titiler-pgstac reads the COGs at their item hrefs (http(s) here: the public base URL).
    env = {
        **pg_env(stack),
        # A re-published item shows at once (its 5-minute cache is for production traffic).
        "TITILER_PGSTAC_CACHE_DISABLE": "TRUE",
        # Maps of one COG as a COG (its colour table included): the links of lib/tiles.
        "TITILER_PGSTAC_API_ENABLE_ASSETS_ENDPOINTS": "TRUE",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    # titiler-pgstac's app, its mosaics reading our id-keyed COG assets.
    argv = uvicorn_argv("bq_pipelines.runtime.tiler:app", port)
    return Service("tiler", port, argv, child_env(env), tiler_answers, stack)


def services_on(stack: Stack, ports: Ports) -> tuple[Service, Service, Service]:
    s3_port, stac_port, tiler_port = ports
    return (
        moto_service(stack, s3_port),
        stac_service(stack, stac_port),
        tiler_service(stack, tiler_port),
    )


def services_env_lines(stack: Stack, ports: Ports) -> list[tuple[str, str]]:
    s3_port, stac_port, tiler_port = ports
    endpoint = local_url(s3_port)
    return [
        ("BQ_OBJECT_STORE", "s3"),
        ("BQ_S3_BUCKET", S3_BUCKET),
        ("BQ_S3_PREFIX", S3_PREFIX),
        ("BQ_S3_ENDPOINT_URL", endpoint),
        ("BQ_S3_REGION", S3_REGION),
        ("BQ_PUBLIC_BASE_URL", f"{endpoint}/{S3_BUCKET}"),
        # Items point at the public URL, which answers anonymous GETs only for public objects.
        ("BQ_S3_PUBLIC_READ", "true"),
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY),
        ("AWS_DEFAULT_REGION", S3_REGION),
        ("AWS_S3_ENDPOINT", f"{HOST}:{s3_port}"),
        ("AWS_HTTPS", "NO"),
        ("AWS_VIRTUAL_HOSTING", "FALSE"),
        ("BQ_CATALOG", "stac-api"),
        ("BQ_STAC_API_URL", local_url(stac_port)),
        ("BQ_PGSTAC_DSN", stack.dsn),
        ("BQ_TILER_URL", local_url(tiler_port)),
    ]


# ---------------------------------------------------------------------------------------------
# Ports


def stack_ports(stack: Stack) -> Ports:
    if stack.disposable:
        return test_stack_ports(stack)
    return (
        port_from_env(PORT_VARIABLES["moto"], USER_PORTS["moto"]),
        port_from_env(PORT_VARIABLES["stac-api"], USER_PORTS["stac-api"]),
        port_from_env(PORT_VARIABLES["tiler"], USER_PORTS["tiler"]),
    )


def test_port_candidates() -> list[Ports]:
    first_slot = int(checkout_hash(), 16)
    slots = ((first_slot + n) % TEST_PORT_SLOTS for n in range(TEST_PORT_TRIES))
    return [
        (
            TEST_PORTS_FIRST + 3 * slot,
            TEST_PORTS_FIRST + 3 * slot + 1,
            TEST_PORTS_FIRST + 3 * slot + 2,
        )
        for slot in slots
    ]


def test_stack_ports(stack: Stack) -> Ports:
    """The ports this stack's servers run on, else the first candidates all free."""
    candidates = test_port_candidates()
    for ports in candidates:
        if any(owned_pid(service) for service in services_on(stack, ports)):
            return ports
    for ports in candidates:
        if all(port_is_free(port) for port in ports):
            return ports
    raise ServicesError(
        f"no three free ports among {len(candidates)} candidates in "
        f"{TEST_PORTS_FIRST}-{TEST_PORTS_FIRST + 3 * TEST_PORT_SLOTS - 1}"
    )


def port_is_free(port: int) -> bool:
    """Nothing listens on HOST:`port` (binding as the servers do, SO_REUSEADDR included)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Health checks


def s3_client(port: int):  # -> botocore S3 client; boto3 is imported lazily (slow import)
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=local_url(port),
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        # Health checks poll: fail fast instead of botocore's retries and 60 s timeouts.
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )


def moto_answers(port: int) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(port).list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True


def json_answer(url: str) -> object:
    """The JSON body of a 200 answer to GET `url`, or None."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def stac_api_answers(port: int) -> bool:
    """True when GET / is a STAC landing page (not merely something on the port)."""
    body = json_answer(f"{local_url(port)}/")
    return isinstance(body, dict) and "stac_version" in body and "links" in body


def tiler_answers(port: int) -> bool:
    """True when titiler-pgstac's /healthz says its database is online."""
    body = json_answer(f"{local_url(port)}/healthz")
    return isinstance(body, dict) and body.get("database_online") is True


def pgstac_version(stack: Stack) -> str | None:
    import psycopg

    try:
        with psycopg.connect(stack.dsn, connect_timeout=3) as conn:
            row = conn.execute("SELECT pgstac.get_version()").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


# ---------------------------------------------------------------------------------------------
# Process bookkeeping


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None: a zombie no longer serves anything (containers
    whose PID 1 does not reap keep them around)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.cmdline()
    except psutil.Error:
        return None


def is_alive(pid: int) -> bool:
    return process_cmdline(pid) is not None


def is_ours(pid: int, service: Service) -> bool:
    """The PID is alive and still runs exactly this service's command line.

    PIDs get recycled, and other checkouts and stacks run the same server on other ports, so
    the whole argv (script path, host, port) must match. The kernel shows the interpreter first
    (`python3 .venv/bin/uvicorn ...`): our argv is a suffix of the process's.
    """
    cmdline = process_cmdline(pid)
    return cmdline is not None and cmdline[-len(service.argv) :] == service.argv


def runs_other_config(pid: int, service: Service) -> bool:
    """Same server program, other arguments: a copy started with other ports (BQ_*_PORT)."""
    cmdline = process_cmdline(pid)
    return cmdline is not None and service.argv[0] in cmdline and not is_ours(pid, service)


def refuse_other_config(service: Service) -> None:
    """One PID file per service name: never overwrite the record of a copy on other ports."""
    pid = read_pid(service.pid_file)
    if pid is not None and runs_other_config(pid, service):
        cmdline = shlex.join(process_cmdline(pid) or [])
        raise ServicesError(
            f"{service.name}: {service.pid_file} records pid {pid} ({cmdline}), started with "
            f"other ports; run `down` with the same {'/'.join(PORT_VARIABLES.values())} first"
        )


def owned_pid(service: Service) -> int | None:
    pid = read_pid(service.pid_file)
    return pid if pid is not None and is_ours(pid, service) else None


def listener_pids(port: int) -> set[int]:
    """Processes listening on HOST:`port` (another user's show no PID: never ours anyway)."""
    return {
        connection.pid
        for connection in psutil.net_connections(kind="tcp4")
        if connection.status == psutil.CONN_LISTEN
        and connection.laddr
        and (connection.laddr.ip, connection.laddr.port) == (HOST, port)
        and connection.pid is not None
    }


def adopt_orphan(service: Service) -> int | None:
    """Our own server still running after its PID file was lost (e.g. `.bq/run` deleted).

    Only a listener whose whole command line is ours is adopted, so `down` can stop it again.
    """
    for pid in sorted(listener_pids(service.port)):
        if is_ours(pid, service):
            write_text_atomically(service.pid_file, f"{pid}\n")
            return pid
    return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def restore_default_signals() -> None:
    """Ignored SIGINT/SIGTERM survive exec: reset them so `down`'s SIGTERM is not ignored.

    A non-interactive shell starting us in the background ignores SIGINT, and children would
    inherit that (`dagster dev` started so ignores SIGTERM too).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# Start / stop


def wait_until_answers(service: Service, process: subprocess.Popen | None, timeout: float) -> None:
    def exited() -> str | None:
        if process is None or process.poll() is None:
            return None
        return f"exited with code {process.returncode} while starting"

    try:
        wait_until(
            lambda: service.answers(service.port),
            timeout=timeout,
            what=f"{service.name} answering on {HOST}:{service.port}",
            failed=exited,
        )
    except WaitTimeout as exc:
        raise ServicesError(
            f"{exc}; last lines of {service.log_file}:\n{log_tail(service.log_file)}"
        ) from None


def spawn(service: Service) -> subprocess.Popen:
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    # Append, so a crash log from a previous start is still there to read.
    with service.log_file.open("a") as log:
        log.write(
            f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {shlex.join(service.argv)}\n"
        )
        log.flush()
        process = subprocess.Popen(
            service.argv,
            env=service.env,
            # Not the project root: both pydantic-settings classes read a `.env` in the cwd.
            cwd=service.stack.run_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    write_text_atomically(service.pid_file, f"{process.pid}\n")
    return process


def ensure_running(service: Service, timeout: float) -> str:
    """Start `service` unless a live, answering copy is already there; say what was done."""
    refuse_other_config(service)
    pid = owned_pid(service) or adopt_orphan(service)
    if pid is not None:
        # Ours and alive: give a still-starting server a moment before declaring it hung.
        try:
            wait_until_answers(service, None, timeout=min(timeout, 5.0))
            return f"{service.name}: reusing pid {pid} on port {service.port}"
        except ServicesError:
            stop(service)
    else:
        service.pid_file.unlink(missing_ok=True)
        if not port_is_free(service.port):
            return use_foreign_server(service)
    started = time.monotonic()
    process = spawn(service)
    try:
        wait_until_answers(service, process, timeout)
    except ServicesError:
        stop(service)
        raise
    elapsed = time.monotonic() - started
    return f"{service.name}: started pid {process.pid} on port {service.port} ({elapsed:.1f} s)"


def use_foreign_server(service: Service) -> str:
    """The user's stack uses a server it did not start if it answers as ours would; a test
    stack never does (it could serve a user's database)."""
    if not service.stack.disposable and service.answers(service.port):
        return (
            f"{service.name}: port {service.port} already answers, started outside this "
            f"script; using it (`down` will not stop it)"
        )
    how = f"choose another port with {PORT_VARIABLES[service.name]}"
    if service.stack.disposable:
        how = "run `up --stack test` again: it picks free ports"
    raise ServicesError(
        f"{service.name}: port {service.port} is taken by another program; free it or {how}"
    )


def signal_group(pid: int, signum: int) -> None:
    # start_new_session made the server a group leader: signal the group so children go too,
    # but only if that is still true (never signal a group we did not create).
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wait_for_exit(pid: int, timeout: float) -> bool:
    try:
        wait_until(lambda: not is_alive(pid), timeout=timeout, what=f"pid {pid} exiting", poll=0.1)
    except WaitTimeout:
        return False
    return True


def stop(service: Service) -> str:
    pid = read_pid(service.pid_file)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return f"{service.name}: not running (no pid file)"
    if runs_other_config(pid, service):
        return (
            f"{service.name}: pid {pid} runs with other ports than this command's; left running "
            f"(run `down` with the same {'/'.join(PORT_VARIABLES.values())})"
        )
    if not is_ours(pid, service):
        service.pid_file.unlink(missing_ok=True)
        return f"{service.name}: pid {pid} is gone or no longer {service.name}; removed pid file"
    signal_group(pid, signal.SIGTERM)
    how = "stopped"
    if not wait_for_exit(pid, STOP_TIMEOUT_S):
        signal_group(pid, signal.SIGKILL)
        wait_for_exit(pid, STOP_TIMEOUT_S)
        how = "killed (ignored SIGTERM)"
    service.pid_file.unlink(missing_ok=True)
    return f"{service.name}: {how} pid {pid}"


# ---------------------------------------------------------------------------------------------
# PostgreSQL: PostGIS package, database, extensions, pgstac schema


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


def ensure_bucket(port: int) -> str:
    from botocore.exceptions import ClientError

    client = s3_client(port)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if S3_BUCKET in existing:
        return f"bucket {S3_BUCKET}: exists"
    try:
        client.create_bucket(Bucket=S3_BUCKET)
    except ClientError as exc:
        # Created meanwhile by someone else (the lock only covers this checkout): fine.
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise ServicesError(f"creating bucket {S3_BUCKET} failed: {exc}") from exc
    return f"bucket {S3_BUCKET}: created"


def write_env_file(stack: Stack, ports: Ports) -> None:
    relative = stack.env_file.relative_to(PROJECT_ROOT)
    header = [
        f"# Generated by scripts/services.py up --stack {stack.name}: do not edit, it is "
        "rewritten on every `up`.",
        f"# `. {relative}` points the project at this stack's services (S3, STAC API, tiler).",
    ]
    body = [f"export {key}={shlex.quote(value)}" for key, value in services_env_lines(stack, ports)]
    # It holds the S3 keys and the catalog's connection string: its owner's only.
    write_text_atomically(stack.env_file, "\n".join(header + body) + "\n", mode=PRIVATE_FILE_MODE)


# ---------------------------------------------------------------------------------------------
# Commands


def lock_file(stack: Stack) -> Path:
    """Serialises `up`/`down` of one stack (parallel pytest sessions share one checkout)."""
    return stack.run_dir / "services.lock"


def cmd_up(stack: Stack, timeout: float) -> int:
    started = time.monotonic()
    restore_default_signals()
    with exclusive_lock(lock_file(stack)):
        ports = stack_ports(stack)
        moto, stac, tiler = services_on(stack, ports)
        print(ensure_postgis_package())
        if stack.disposable and not any(owned_pid(s) for s in (moto, stac, tiler)):
            print(drop_stack_databases(stack))  # a new run begins on a new database
        print(ensure_catalog_database(stack))
        print(migrate_pgstac(stack))
        print(ensure_running(moto, timeout))
        print(ensure_bucket(moto.port))
        print(ensure_running(stac, timeout))
        print(ensure_running(tiler, timeout))
        write_env_file(stack, ports)
    relative = stack.env_file.relative_to(PROJECT_ROOT)
    print(f"wrote {relative} (. {relative}); up in {time.monotonic() - started:.1f} s")
    return 0


def cmd_down(stack: Stack) -> int:
    with exclusive_lock(lock_file(stack)):
        moto, stac, tiler = services_on(stack, stack_ports(stack))
        for service in (tiler, stac, moto):
            print(stop(service))
        if stack.disposable:
            print(drop_stack_databases(stack))
            stack.env_file.unlink(missing_ok=True)
    return 0


def cmd_status(stack: Stack) -> int:
    """Exit status 0 when every service answers, 1 otherwise."""
    all_answer = True
    for service in services_on(stack, stack_ports(stack)):
        pid = owned_pid(service)
        answers = service.answers(service.port)
        all_answer &= answers
        owner = f"pid {pid}" if pid is not None else "no pid file of ours"
        state = "answers" if answers else "does not answer"
        print(f"{service.name:9} {HOST}:{service.port}  {state}  ({owner})")
    version = pgstac_version(stack)
    all_answer &= version is not None
    pg_state = f"answers, pgstac {version}" if version else "does not answer or no pgstac"
    print(f"{'postgres':9} {HOST}:{PG_PORT}  {pg_state} in {stack.database}  (system service)")
    return 0 if all_answer else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--stack",
        choices=sorted(STACKS),
        default="user",
        help="the user's stack (`make services`) or this checkout's tests' own (`make test`)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=START_TIMEOUT_S,
        help="seconds to wait for each server to answer (default %(default)s)",
    )
    args = parser.parse_args(argv)
    stack = STACKS[args.stack]()
    try:
        if args.command == "up":
            return cmd_up(stack, args.timeout)
        if args.command == "down":
            return cmd_down(stack)
        return cmd_status(stack)
    except ServicesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
