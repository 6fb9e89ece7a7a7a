"""Real Dagster processes for tests: webserver, daemon, Celery workers, each in its own process
group, and the GraphQL calls the tests make to them (load a workspace, launch and watch a backfill).

Used by `test_backfill.py` (webserver + daemon on SQLite) and `deploy/test_celery.py` (the
production instance on PostgreSQL, steps on Celery workers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import bq_pipelines_testkit.http_client as http
from bq_pipelines.ingestion.code_servers import CODE_SERVER_MODULE, free_port, wait_until_listening
from bq_pipelines.lib.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Generous: the code location loads the dataset components, and a loaded CI machine (2 cores
# shared by several suites) takes minutes to start a webserver and its code server.
STARTUP_TIMEOUT = 180.0


def write_workspace(path: Path, module_name: str, location_name: str) -> Path:
    """A workspace.yaml loading `module_name` (importable from PROJECT_ROOT) as a code location."""
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        f"      module_name: {module_name}\n"
        f"      working_directory: {PROJECT_ROOT}\n"
        f"      location_name: {location_name}\n"
    )
    return path


def write_grpc_workspace(path: Path, port: int, location_name: str) -> Path:
    """A workspace.yaml reaching a code server on 127.0.0.1:`port`, as deploy/ does."""
    path.write_text(
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {port}\n"
        f"      location_name: {location_name}\n"
    )
    return path


def _default_sigint() -> None:
    # A background shell may hand us SIGINT ignored; Dagster copies that onto SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Deployment:
    """Dagster processes started by a test, each in its own process group."""

    env: dict[str, str]
    workspace: Path
    logs: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def graphql_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    def start(
        self, name: str, *args: str, log_name: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `BIN/name args` with this deployment's environment (plus `env`), logging to
        `<logs>/<log_name or name>.log` (appended: a restarted process keeps its history)."""
        log = (self.logs / f"{log_name or name}.log").open("ab")
        process = subprocess.Popen(
            [str(BIN / name), *args],
            env={**self.env, **(env or {})},
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        log.close()
        self.processes.append(process)
        return process

    def start_webserver(self) -> None:
        self.start(
            "dagster-webserver", "-w", str(self.workspace), "-h", "127.0.0.1", "-p", str(self.port)
        )

    def start_daemon(self) -> None:
        self.start("dagster-daemon", "run", "-w", str(self.workspace))

    def start_code_server(
        self, module_name: str, port: int, log_name: str = "code-server"
    ) -> subprocess.Popen[bytes]:
        """`dagster api grpc` serving `module_name` on 127.0.0.1:`port`, once it listens (its
        definitions loaded). A daemon whose workspace names a Python module starts a code server
        of its own and replaces it every minute (a full load each time); one reached through a
        `grpc_server` workspace (write_grpc_workspace) stays, as in deploy/."""
        process = self.start(
            "python",
            *CODE_SERVER_MODULE,
            *("api", "grpc", "-m", module_name, "-h", "127.0.0.1", "-p", str(port)),
            log_name=log_name,
        )

        wait_until_listening(
            process,
            port,
            timeout=STARTUP_TIMEOUT,
            what=f"the code server listening on port {port}",
            detail=self.log_tail,
        )
        return process

    def serve_from_code_server(self, module_name: str, location_name: str) -> None:
        """A code server for `module_name`, and the workspace of the processes started after
        it pointed at that server: the webserver and the daemon share one loaded location."""
        port = free_port()
        self.start_code_server(module_name, port)
        self.workspace = write_grpc_workspace(
            self.workspace.with_name("workspace-grpc.yaml"), port, location_name
        )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """kill -9 of that process only: what it started lives on (stop() ends them)."""
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM each process group (code servers and run workers included), then SIGKILL."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # leftovers of the group, if any
            process.wait(timeout=5)

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = http.post(
            self.graphql_url, json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.logs.glob("*.log"))
        )

    def exited(self) -> str | None:
        """The first of its processes that exited, or None: a wait on them is over."""
        gone = [process.args for process in self.processes if process.poll() is not None]
        return f"{gone[0]!r} exited" if gone else None

    def backfill_status(self, backfill_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.graphql(BACKFILL_STATUS, id=backfill_id)[
            "partitionBackfillOrError"
        ]
        assert status["__typename"] == "PartitionBackfill", status
        return status

    def wait_for_backfill(
        self,
        backfill_id: str,
        timeout: float,
        *,
        over_if_a_process_exits: bool = True,
        state: Callable[[], str] = lambda: "",
    ) -> dict[str, Any]:
        """The backfill's status once it is finished; with `over_if_a_process_exits`, the wait
        ends at once when one of the deployment's processes exits (a test that kills one on
        purpose says False). A failed wait reports `state()` (a broker's queues, say) before the
        processes' logs."""
        seen: list[dict[str, Any]] = []

        def finished() -> dict[str, Any] | None:
            seen.append(self.backfill_status(backfill_id))
            return seen[-1] if seen[-1]["status"] in FINISHED else None

        return wait_until(
            finished,
            timeout=timeout,
            what=f"backfill {backfill_id} finishing",
            poll=1,
            failed=self.exited if over_if_a_process_exits else None,
            detail=lambda: (
                f"backfill still {seen[-1] if seen else None}\n{state()}\n{self.log_tail()}"
            ),
        )

    def wait_until_loaded(self) -> None:
        wait_until(
            self._location_loaded,
            timeout=STARTUP_TIMEOUT,
            what="the webserver loading the code location",
            poll=0.3,
            failed=self.exited,
            detail=self.log_tail,
        )

    def _location_loaded(self) -> bool:
        try:
            data = self.graphql(WORKSPACE_QUERY)
        except (httpx.HTTPError, ValueError):
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            assert loaded.get("__typename") != "PythonError", loaded.get("message")
            if entry["loadStatus"] == "LOADED" and loaded["__typename"] == "RepositoryLocation":
                return True
        return False


def child_pids(pid: int) -> list[int]:
    """The live children of `pid`, started by any of its threads (from /proc: Linux)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.update(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(children)


def running(pid: int) -> bool:
    """Whether `pid` exists and has not ended (a zombie, not yet reaped, has ended)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      error { message }
      assetBackfillData { assetBackfillStatuses { __typename
        ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
          numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } }
    }
    ... on PythonError { message }
  }
}
"""

FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
