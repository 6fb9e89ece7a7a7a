"""Start, stop and inspect the real local stack for dev and tests: moto S3, stac-fastapi-pgstac
and titiler-pgstac.

Usage: `python scripts/services.py up|down|status` (with the project venv's python). `up` is
idempotent: it installs PostGIS if missing, prepares the `bq_catalog` database (extensions +
pgstac migrations), starts or reuses the three servers and writes `.bq/services.env`;
`. .bq/services.env` then points the project at them. `down` stops only the processes whose PID
files `up` wrote.
PostgreSQL itself is the machine's (127.0.0.1:5432, trust auth) and is never started or stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bq_pipelines.lib.files import PRIVATE_FILE_MODE, write_text_atomically

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = PROJECT_ROOT / ".bq"
LOG_DIR = STATE_DIR / "logs"
RUN_DIR = STATE_DIR / "run"
ENV_FILE = STATE_DIR / "services.env"
LOCK_FILE = RUN_DIR / "services.lock"
# Not the venv's resolved interpreter: console scripts live next to the venv's python symlink.
VENV_BIN = Path(sys.executable).parent

HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
# One database per checkout when several share this PostgreSQL (BQ_CATALOG_DB): each checkout's
# services and tests then never see another's catalog.
CATALOG_DB = os.environ.get("BQ_CATALOG_DB") or "bq_catalog"
ADMIN_DSN = f"postgresql://{PG_USER}@{HOST}:{PG_PORT}/postgres"
CATALOG_DSN = f"postgresql://{PG_USER}@{HOST}:{PG_PORT}/{CATALOG_DB}"
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
# The environment variable choosing each server's port (several checkouts on one machine).
PORT_VARIABLES = {"moto": "BQ_S3_PORT", "stac-api": "BQ_STAC_API_PORT", "tiler": "BQ_TILER_PORT"}


@dataclass(frozen=True)
class Service:
    """A server this script owns: how to start it, recognise it and ask whether it answers."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    answers: Callable[[int], bool]

    @property
    def pid_file(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return LOG_DIR / f"{self.name}.log"


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


def s3_endpoint(port: int) -> str:
    return f"http://{HOST}:{port}"


def stac_api_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def moto_service(port: int) -> Service:
    return Service(
        name="moto",
        port=port,
        argv=[venv_executable("moto_server"), "-H", HOST, "-p", str(port)],
        env=child_env({}),
        answers=moto_answers,
    )


def stac_service(port: int) -> Service:
    # Names read by stac-fastapi-pgstac 7.2 (pydantic-settings, case-insensitive):
    # PostgresSettings needs all five PG* (no defaults), Settings reads the extension flag.
    env = {
        "PGHOST": HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": PG_USER,
        "PGPASSWORD": PG_PASSWORD_PLACEHOLDER,
        "PGDATABASE": CATALOG_DB,
        "ENABLE_TRANSACTIONS_EXTENSIONS": "true",
    }
    return Service(
        name="stac-api",
        port=port,
        argv=[
            venv_executable("uvicorn"),
            "stac_fastapi.pgstac.app:create_app",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        env=child_env(env),
        answers=stac_api_answers,
    )


def tiler_service(port: int) -> Service:
    # titiler-pgstac 3.2 reads the catalog database from the same PG* variables (its
    # PostgresSettings) and the COGs at their item hrefs (http(s) here: the public base URL).
    env = {
        "PGHOST": HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": PG_USER,
        "PGPASSWORD": PG_PASSWORD_PLACEHOLDER,
        "PGDATABASE": CATALOG_DB,
        # A re-published item shows at once (its 5-minute cache is for production traffic).
        "TITILER_PGSTAC_CACHE_DISABLE": "TRUE",
        # Maps of one COG as a COG (its colour table included): the links of lib/tiles.
        "TITILER_PGSTAC_API_ENABLE_ASSETS_ENDPOINTS": "TRUE",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    return Service(
        name="tiler",
        port=port,
        argv=[
            venv_executable("uvicorn"),
            # titiler-pgstac's app, its mosaics reading our id-keyed COG assets.
            "bq_pipelines.runtime.tiler:app",
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        env=child_env(env),
        answers=tiler_answers,
    )


def tiler_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def services_env_lines(s3_port: int, stac_port: int, tiler_port: int) -> list[tuple[str, str]]:
    endpoint = s3_endpoint(s3_port)
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
        ("BQ_STAC_API_URL", stac_api_url(stac_port)),
        ("BQ_PGSTAC_DSN", CATALOG_DSN),
        ("BQ_TILER_URL", tiler_url(tiler_port)),
    ]


# ---------------------------------------------------------------------------------------------
# Health checks


def s3_client(port: int):  # -> botocore S3 client; boto3 is imported lazily (slow import)
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(port),
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


def stac_api_answers(port: int) -> bool:
    """True when GET / is a 200 STAC landing page (not merely something on the port)."""
    try:
        with urllib.request.urlopen(f"{stac_api_url(port)}/", timeout=2) as response:
            if response.status != 200:
                return False
            body = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and "stac_version" in body and "links" in body


def tiler_answers(port: int) -> bool:
    """True when titiler-pgstac's /healthz says its database is online."""
    try:
        with urllib.request.urlopen(f"{tiler_url(port)}/healthz", timeout=2) as response:
            body = json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("database_online") is True


def port_accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def pgstac_version() -> str | None:
    import psycopg

    try:
        with psycopg.connect(CATALOG_DSN, connect_timeout=3) as conn:
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


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc (R, S, Z...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces: the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def is_alive(pid: int) -> bool:
    # A zombie no longer serves anything; containers whose PID 1 does not reap keep them around.
    state = process_state(pid)
    return state is not None and state != "Z"


def is_ours(pid: int, service: Service) -> bool:
    """The PID is alive and still runs exactly this service's command line.

    PIDs get recycled, and other checkouts may run the same server on another port, so the
    whole argv (script path, host, port) must match. The kernel shows the interpreter first
    (`python3 .venv/bin/uvicorn ...`): our argv is a suffix of the process's.
    """
    cmdline = process_cmdline(pid)
    return cmdline is not None and cmdline[-len(service.argv) :] == service.argv


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or None."""
    if not is_alive(pid):
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").rstrip("\0").split("\0")


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


def listening_socket_inodes(port: int) -> set[str]:
    """Inodes of sockets listening on HOST:`port`, from /proc/net/tcp (IPv4, hex fields)."""
    wanted = f"{socket.inet_aton(HOST)[::-1].hex().upper()}:{port:04X}"
    inodes: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A = LISTEN
                inodes.add(fields[9])
    return inodes


def listener_pids(port: int) -> set[int]:
    inodes = {f"socket:[{inode}]" for inode in listening_socket_inodes(port)}
    pids: set[int] = set()
    if not inodes:
        return pids
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.add(int(proc.name))
    return pids


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


@contextlib.contextmanager
def exclusive_lock() -> Iterator[None]:
    """Serialise concurrent `up`/`down` (parallel pytest sessions share one checkout)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.answers(service.port):
            return
        if process is not None and process.poll() is not None:
            raise ServicesError(
                f"{service.name} exited with code {process.returncode} while starting; "
                f"last lines of {service.log_file}:\n{log_tail(service.log_file)}"
            )
        time.sleep(0.2)
    raise ServicesError(
        f"{service.name} did not answer on {HOST}:{service.port} within {timeout:.1f} s; "
        f"last lines of {service.log_file}:\n{log_tail(service.log_file)}"
    )


def spawn(service: Service) -> subprocess.Popen:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
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
            cwd=RUN_DIR,
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
        with contextlib.suppress(ServicesError):
            wait_until_answers(service, None, timeout=min(timeout, 5.0))
            return f"{service.name}: reusing pid {pid} on port {service.port}"
        stop(service)
    else:
        service.pid_file.unlink(missing_ok=True)
        if service.answers(service.port):
            return (
                f"{service.name}: port {service.port} already answers, started outside this "
                f"script; using it (`down` will not stop it)"
            )
        if port_accepts_connections(service.port):
            env_name = PORT_VARIABLES[service.name]
            raise ServicesError(
                f"{service.name}: port {service.port} is taken by another program that is not "
                f"{service.name}; free it or choose another port with {env_name}"
            )
    started = time.monotonic()
    process = spawn(service)
    try:
        wait_until_answers(service, process, timeout)
    except ServicesError:
        stop(service)
        raise
    elapsed = time.monotonic() - started
    return f"{service.name}: started pid {process.pid} on port {service.port} ({elapsed:.1f} s)"


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.1)
    return not is_alive(pid)


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


def run_checked(argv: list[str], **options: object) -> None:
    """Run a command; ServicesError with the tail of its output when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **options)
    if result.returncode != 0:
        raise ServicesError(
            f"{shlex.join(argv)} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def ensure_catalog_database() -> str:
    import psycopg
    from psycopg import sql

    try:
        # CREATE DATABASE cannot run inside a transaction block.
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (CATALOG_DB,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CATALOG_DB)))
        with psycopg.connect(CATALOG_DSN, autocommit=True, connect_timeout=5) as conn:
            for extension in PG_EXTENSIONS:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension))
                )
    except psycopg.Error as exc:
        raise ServicesError(
            f"preparing database {CATALOG_DB} on {HOST}:{PG_PORT} failed: {exc}. "
            f"Is PostgreSQL 15 running with trust auth for {PG_USER}?"
        ) from exc
    return (
        f"{CATALOG_DB}: {'exists' if exists else 'created'}, extensions {', '.join(PG_EXTENSIONS)}"
    )


def migrate_pgstac() -> str:
    run_checked([venv_executable("pypgstac"), "migrate", "--dsn", CATALOG_DSN], cwd=RUN_DIR)
    return f"pgstac: migrated ({pgstac_version() or 'version unknown'})"


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


def write_services_env(s3_port: int, stac_port: int, tiler_port: int) -> None:
    header = [
        "# Generated by scripts/services.py up: do not edit, it is rewritten on every `up`.",
        "# `. .bq/services.env` points the project at the local services (S3, STAC API, tiler).",
    ]
    body = [
        f"export {key}={shlex.quote(value)}"
        for key, value in services_env_lines(s3_port, stac_port, tiler_port)
    ]
    # It holds the S3 keys and the catalog's connection string: its owner's only.
    write_text_atomically(ENV_FILE, "\n".join(header + body) + "\n", mode=PRIVATE_FILE_MODE)


# ---------------------------------------------------------------------------------------------
# Commands


def configured_services() -> tuple[Service, Service, Service]:
    s3_port = port_from_env(PORT_VARIABLES["moto"], 9010)
    stac_port = port_from_env(PORT_VARIABLES["stac-api"], 8082)
    tiler_port = port_from_env(PORT_VARIABLES["tiler"], 8084)
    return moto_service(s3_port), stac_service(stac_port), tiler_service(tiler_port)


def cmd_up(timeout: float) -> int:
    started = time.monotonic()
    restore_default_signals()
    moto, stac, tiler = configured_services()
    with exclusive_lock():
        print(ensure_postgis_package())
        print(ensure_catalog_database())
        print(migrate_pgstac())
        print(ensure_running(moto, timeout))
        print(ensure_bucket(moto.port))
        print(ensure_running(stac, timeout))
        print(ensure_running(tiler, timeout))
        write_services_env(moto.port, stac.port, tiler.port)
    print(
        f"wrote {ENV_FILE.relative_to(PROJECT_ROOT)} "
        f"(. {ENV_FILE.relative_to(PROJECT_ROOT)}); up in {time.monotonic() - started:.1f} s"
    )
    return 0


def cmd_down() -> int:
    moto, stac, tiler = configured_services()
    with exclusive_lock():
        for service in (tiler, stac, moto):
            print(stop(service))
    return 0


def cmd_status() -> int:
    """Exit status 0 when every service answers, 1 otherwise."""
    all_answer = True
    for service in configured_services():
        pid = owned_pid(service)
        answers = service.answers(service.port)
        all_answer &= answers
        owner = f"pid {pid}" if pid is not None else "no pid file of ours"
        state = "answers" if answers else "does not answer"
        print(f"{service.name:9} {HOST}:{service.port}  {state}  ({owner})")
    version = pgstac_version()
    all_answer &= version is not None
    pg_state = f"answers, pgstac {version}" if version else "does not answer or no pgstac"
    print(f"{'postgres':9} {HOST}:{PG_PORT}  {pg_state}  (system service, not managed here)")
    return 0 if all_answer else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--timeout",
        type=float,
        default=START_TIMEOUT_S,
        help="seconds to wait for each server to answer (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return cmd_up(args.timeout)
        if args.command == "down":
            return cmd_down()
        return cmd_status()
    except ServicesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
