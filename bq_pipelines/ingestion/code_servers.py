"""Code servers for `--with-daemon`: one `dagster api grpc` process per Python module of the
workspace, and the workspace the daemon reads rewritten to reach them (`grpc_server`), as deploy/
runs them.

A daemon whose workspace names a Python module starts a code server of its own and replaces it
every 60 s (Dagster's workspace refresh): a full load of the code location each minute, ~5 s of
CPU, on a developer's machine that is otherwise idle. A server reached through `grpc_server` is
asked for its snapshot instead, and stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.waiting import WaitTimeout, wait_until

# `python -m dagster`, not the `dagster` script: a run worker is a multiprocessing spawn of the
# code server, which first runs the server's main module again unless it is a package's
# `__main__` (multiprocessing/spawn.py): the script imported Dagster's whole CLI in every run
# worker (~0.15 s of CPU each).
CODE_SERVER_MODULE = ("-m", "dagster")
READY_SECONDS = 180.0  # a code location loads in seconds; a loaded 2-core machine takes minutes
STOP_SECONDS = 15


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` (a code server listens once
    its definitions are loaded)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


def _python_module(entry: Any) -> dict[str, Any] | None:
    """A workspace entry's `python_module` as a mapping (it may be a bare module name), with
    the location name Dagster gives it (the module's, unless the entry names one)."""
    if not isinstance(entry, dict) or "python_module" not in entry:
        return None
    given = entry["python_module"]
    module = {"module_name": given} if isinstance(given, str) else dict(given)
    module.setdefault("location_name", module["module_name"])
    return module


def _server_command(module: dict[str, Any], port: int, workspace: Path) -> list[str]:
    working_directory = Path(module.get("working_directory", workspace.parent))
    if not working_directory.is_absolute():
        working_directory = workspace.parent / working_directory
    return [
        sys.executable,
        *CODE_SERVER_MODULE,
        *("api", "grpc", "-m", module["module_name"], "-h", "127.0.0.1", "-p", str(port)),
        *("-d", str(working_directory), "--location-name", module["location_name"]),
    ]


def wait_until_listening(
    process: subprocess.Popen[Any],
    port: int,
    *,
    timeout: float,
    what: str,
    poll: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> None:
    """Until the started `process` accepts connections on 127.0.0.1:`port`; WaitTimeout naming
    `what` when the time runs out or the process exits first (with its stderr, if piped)."""

    def exited() -> str | None:
        if process.poll() is None:
            return None
        stderr = process.stderr.read() if process.stderr is not None else ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        return f"exited with {process.returncode}" + (f": {stderr}" if stderr else "")

    wait_until(
        lambda: listening(port), timeout=timeout, what=what, poll=poll, failed=exited, detail=detail
    )


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> None:
    try:
        wait_until_listening(
            process, port, timeout=READY_SECONDS, what=f"the code server for port {port}"
        )
    except WaitTimeout as error:
        raise ConfigError(str(error)) from None


def stop_process_group(process: subprocess.Popen[bytes], seconds: float = STOP_SECONDS) -> None:
    """SIGTERM to the process's group, SIGKILL if it is still there after `seconds`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def served_workspace(
    workspace: Path, folder: Path, preexec_fn: Callable[[], None] | None = None
) -> Iterator[Path]:
    """`workspace` with each `python_module` location served by a code server started here
    (each in its own process group, stopped on exit); other entries are kept as they are."""
    try:
        entries = yaml.safe_load(workspace.read_text())["load_from"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise ConfigError(f"--workspace {workspace}: not a workspace file ({error})") from None
    processes: list[subprocess.Popen[bytes]] = []
    try:
        served = []
        for entry in entries:
            module = _python_module(entry)
            if module is None:
                served.append(entry)
                continue
            port = free_port()
            process = subprocess.Popen(
                _server_command(module, port, workspace),
                start_new_session=True,
                preexec_fn=preexec_fn,
            )
            processes.append(process)
            _wait_until_listening(process, port)
            grpc = {"host": "127.0.0.1", "port": port, "location_name": module["location_name"]}
            served.append({"grpc_server": grpc})
        path = folder / "workspace.yaml"
        path.write_text(yaml.safe_dump({"load_from": served}))
        yield path
    finally:
        for process in processes:
            stop_process_group(process)
