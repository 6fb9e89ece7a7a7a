"""A service brought up (reused, adopted or started, then awaited until it answers) or stopped."""

from __future__ import annotations

import signal
import subprocess
import time

from bq_pipelines.lib.waiting import WaitTimeout, wait_until
from local_stack.ports import port_is_free
from local_stack.processes import (
    adopt_orphan,
    is_ours,
    log_tail,
    owned_pid,
    read_pid,
    refuse_other_config,
    runs_other_config,
    signal_group,
    spawn,
    wait_for_exit,
)
from local_stack.stacks import HOST, PORT_VARIABLES, STOP_TIMEOUT_S, Service, ServicesError


def wait_until_answers(
    service: Service, process: subprocess.Popen[bytes] | None, timeout: float
) -> None:
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
