"""`python -m bq_pipelines.ingestion [--with-daemon]`: the ingestion API on BQ_API_HOST:BQ_API_PORT.

`--with-daemon` also runs `dagster-daemon` on the workspace, which processes the requests (its
sensor starts one run per request): what `make api` runs. In production the daemon is a service
of its own, and the API runs without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg
import uvicorn

from bq_pipelines.ingestion.code_servers import served_workspace, stop_process_group
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.settings import API_TOKEN_ENV, ApiSettings, Settings, api_token

DAEMON_STOP_SECONDS = 15
DAEMON_NICENESS = 10


def _prepare_daemon() -> None:
    # Started from a non-interactive shell, SIGINT may be ignored; Dagster copies that onto
    # SIGTERM, and then it could not be stopped.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Answering a request is interactive, processing it is not: on a shared machine the
    # daemon and its runs yield the CPU to the API.
    os.nice(DAEMON_NICENESS)


@contextlib.contextmanager
def dagster_daemon(workspace: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` in its own process group, on code servers of its own
    (code_servers.py), all stopped (with their children) on exit."""
    if not os.environ.get("DAGSTER_HOME"):
        raise ConfigError("DAGSTER_HOME: required with --with-daemon (the Dagster instance)")
    # The instance's storage is created here, before the daemon and the API open it at once: two
    # processes creating a new SQLite storage together can both stamp its schema version, and the
    # next process to open it refuses it ("more than one head").
    dg.DagsterInstance.get().dispose()
    executable = Path(sys.executable).parent / "dagster-daemon"
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bq-api-")))
        served = stack.enter_context(served_workspace(workspace, folder, _prepare_daemon))
        process = subprocess.Popen(
            [str(executable), "run", "-w", str(served)],
            start_new_session=True,
            preexec_fn=_prepare_daemon,
        )
        try:
            yield process
        finally:
            stop_process_group(process, DAEMON_STOP_SECONDS)


def token_from_file(path: Path) -> str:
    """The token kept in `path`, generated there (mode 600) the first time. For a developer's
    `make api`; a deployment sets BQ_API_TOKEN from its secret store."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{path}: the API token file is readable by others (mode {mode:o}): chmod 600 it"
            ) from None
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return token


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # uvicorn re-raises the SIGTERM it handled once it has shut down: exiting through Python
    # (not the default handler) lets the daemon be stopped on the way out.
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bq_pipelines.ingestion", description=__doc__)
    parser.add_argument(
        "--with-daemon", action="store_true", help="also run dagster-daemon (processing)"
    )
    parser.add_argument("--workspace", type=Path, default=Path("workspace.yaml"))
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"without {API_TOKEN_ENV}: the token kept in this file (generated, mode 600)",
    )
    args = parser.parse_args(argv)
    try:
        if args.token_file and not os.environ.get(API_TOKEN_ENV):
            os.environ[API_TOKEN_ENV] = token_from_file(args.token_file)
            print(f"{API_TOKEN_ENV} is not set: using the token in {args.token_file}")
        # Fail here, naming the variable, rather than in the server's first request.
        Settings.from_env(os.environ)
        settings = ApiSettings.from_env(os.environ)
        api_token(os.environ)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        with contextlib.ExitStack() as stack:
            if args.with_daemon:
                stack.enter_context(dagster_daemon(args.workspace))
            uvicorn.run(
                "bq_pipelines.ingestion.app:create_app",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                log_level="info",
            )
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")  # argparse's own exit: usage errors look alike
    return 0


if __name__ == "__main__":
    sys.exit(main())
