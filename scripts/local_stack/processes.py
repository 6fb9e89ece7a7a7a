"""The processes a stack owns: their PID files, whether a PID still runs our command line,
starting one in its own session and signalling its group."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import psutil

from bq_pipelines.lib.files import write_text_atomically
from bq_pipelines.lib.waiting import WaitTimeout, wait_until
from local_stack.stacks import HOST, PORT_VARIABLES, Service, ServicesError

LOG_TAIL_LINES = 30


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


def spawn(service: Service) -> subprocess.Popen[bytes]:
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
