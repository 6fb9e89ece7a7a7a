"""Exactly once across any crash: every process of the API stack is killed (SIGKILL) at every
stage of a request, and each accepted request still ends processed exactly once: finished, one
successful run, one item and one object, whatever runs failed on the way.

Processes: the API, `dagster-daemon` together with its code server's process group (the server
and the run workers it started), the code server alone, a run worker alone. The code server runs
apart from the daemon, reached through a `grpc_server` workspace, as in deploy/: a killed one is
started again as compose or Kubernetes would. Stages:

- accepted: stored, no run yet (the daemon frozen with SIGSTOP, so its sensor cannot tick);
- run queued: both run slots (`max_concurrent_runs: 2`) taken by requests held at their last step;
- run starting: launched, its worker still loading (frozen with SIGSTOP before it reports STARTED);
- run started: the request's run downloading its source (the mirror delays the answer);
- item published: the item is in the catalog, the request not yet finished (the test holds the
  collection's extent lock, which the run takes right after publishing).

Each stage is checked before the kill, so no case passes by having slipped to another stage. A
run that ends without an outcome is retried under a new run key (`_attempt`, `_retries`); the
counts below say how many runs each request needed. Run monitoring's start timeout is shortened
here (60 s instead of 180, polled every 5 s) so a run killed while STARTING is failed sooner; the
mechanism is the same.

Real processes on the real services: PostgreSQL request store, stac-fastapi-pgstac, moto S3.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import boto3
import dagster as dg
import httpx
import pytest
import yaml

import bq_pipelines_testkit.http_client as http
from bq_pipelines.ingestion.definitions import ATTEMPT_TAG, REQUEST_TAG
from bq_pipelines.ingestion.store import RequestStore
from bq_pipelines.lib.waiting import wait_until
from bq_pipelines.runtime.monitoring import run_worker_pid
from bq_pipelines_testkit.api_stack import (
    AUTH,
    ApiStack,
    api_stack,
    legacy_example,
    on_services,
    temporary_collection,
)
from bq_pipelines_testkit.dagster_processes import child_pids, command_line, running
from bq_pipelines_testkit.http_host import LocalHttpHost, serving
from bq_pipelines_testkit.rasters import RasterSpec, write_raster

STAGE_TIMEOUT = 240.0  # a run starts in seconds, a minute on a loaded machine
START_TIMEOUT_SECONDS = 60
T = TypeVar("T")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[LocalHttpHost]:
    with serving(tmp_path / "mirror") as host:
        yield host


@dataclass
class Crash:
    """An API stack on the services, and what the tests do to its processes."""

    api: ApiStack
    mirror: LocalHttpHost
    collection_id: str
    services_env: dict[str, str]
    bq: dict[str, str]
    instance: dg.DagsterInstance  # the stack's, read here (polled: opened once)

    # ------------------------------------------------------------------ requests

    def accept(self) -> str:
        """A request for a new item from a source file of its own (so faults stay its own)."""
        name = f"once-{uuid.uuid4().hex[:10]}"
        write_raster(self.mirror.root / "data" / f"{name}.tif", RasterSpec(width=64, height=48))
        body = legacy_example(self.collection_id, name, self.mirror.url("data"), None)
        return self.api.accepted({**body, "filename": f"{name}.tif"})

    def source_path(self, request_id: str) -> str:
        return f"/data/{self.api.status(request_id)['_param']['name']}.tif"

    def run_of(self, request_id: str) -> dg.DagsterRun | None:
        """The request's newest run."""
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request_id}))
        return runs[0] if runs else None

    def existing_run(self, request_id: str) -> dg.DagsterRun:
        """The request's newest run, which the test expects there."""
        run = self.run_of(request_id)
        assert run is not None, f"request {request_id}: no run"
        return run

    def wait_for(self, what: str, ready: Callable[[], T | None]) -> T:
        return wait_until(
            ready, timeout=STAGE_TIMEOUT, what=what, poll=0.05, detail=self.api.deployment.log_tail
        )

    def wait_for_run(self, request_id: str, statuses: set[dg.DagsterRunStatus]) -> dg.DagsterRun:
        def found() -> dg.DagsterRun | None:
            run = self.run_of(request_id)
            return run if run is not None and run.status in statuses else None

        return self.wait_for(f"request {request_id}: no run {statuses}", found)

    def wait_until_published(self, request_id: str) -> None:
        """Until the run has published the item and waits for the collection's lock (the
        step "collection" of UPLOAD_COG_TO_SERVER; GETCOLLECTION's step has that name too)."""

        def published() -> bool:
            status = self.api.status(request_id)
            return (status["_operation"], status["_step"]) == ("UPLOAD_COG_TO_SERVER", "collection")

        self.wait_for(f"request {request_id} never published its item", published)

    # ------------------------------------------------------------------ processes

    @property
    def daemon(self) -> int:
        return int(self.api.daemon.pid)  # ApiStack.daemon is a Popen typed Any

    def freeze_daemon(self) -> None:
        """SIGSTOP the daemon between two writes: frozen inside one, it would hold SQLite's lock
        and lock every reader of the instance out until it is resumed (a code server started
        meanwhile fails its storage check, "database is locked"). Each storage is a database of
        its own (runs, event log index, schedules and ticks), each read without waiting: through
        the instance a locked event log made each try wait 30 s, Dagster's busy timeout."""

        databases = self.storage_databases()

        def frozen_outside_a_write() -> bool:
            os.kill(self.daemon, signal.SIGSTOP)
            if all(readable_now(path) for path in databases):
                return True
            os.kill(self.daemon, signal.SIGCONT)
            return False

        wait_until(frozen_outside_a_write, timeout=STAGE_TIMEOUT, what="the daemon frozen unlocked")

    def storage_databases(self) -> list[Path]:
        return [
            path
            for path in self.api.dagster_home.rglob("*.db")
            if path.name in ("runs.db", "index.db", "schedules.db")
        ]

    def code_servers(self) -> list[int]:
        """The daemon's code server (a list: the run workers of any of them are the stack's)."""

        def find() -> list[int]:
            server = self.api.code_server
            return [server.pid] if server is not None and server.poll() is None else []

        return self.wait_for("no code server", find)

    def workers(self) -> set[int]:
        return {
            worker
            for server in self.code_servers()
            for worker in child_pids(server)
            if "spawn_main" in command_line(worker)
        }

    def new_worker(self, known: set[int]) -> int:
        """A run worker the code server started since `known` was taken."""
        return self.wait_for("no new run worker", lambda: sorted(self.workers() - known))[-1]

    def wait_until_asked(self, path: str, times: int) -> None:
        def asked() -> bool:
            return self.mirror.count("GET", path) + self.mirror.count("HEAD", path) >= times

        self.wait_for(f"{path} was not asked for {times} times", asked)

    def wait_until_healthy(self) -> None:
        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return bool(
                    http.get(f"{self.api.base_url}/health", timeout=30).json()["dagster"]["ok"]
                )
            return False

        self.wait_for("the daemon never answered", healthy)
        self.code_servers()

    def restart_api(self) -> None:
        self.api.deployment.kill(self.api.api)
        self.api.start_api()

    def restart_daemon(self) -> None:
        """kill -9 of the daemon and of every code server's process group (the servers and the
        run workers they launched): everything Dagster runs dies at once. Then both again."""
        for process in (self.api.daemon, *self.api.code_servers):
            with contextlib.suppress(ProcessLookupError):  # a group with nobody left
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.api.start_daemon()

    def kill_code_servers(self) -> None:
        """kill -9 of the code server (not the daemon, nor its run workers), then a new one,
        as the deployment's supervisor would start."""
        servers = self.code_servers()
        for server in servers:
            os.kill(server, signal.SIGKILL)

        def gone() -> bool:
            return not any(running(server) for server in servers)

        self.wait_for("a code server is still there", gone)
        self.api.code_server.wait(timeout=10)
        self.api.start_code_server()

    @contextlib.contextmanager
    def collection_held(self) -> Iterator[None]:
        """The collection's extent lock, which a run takes right after publishing its item."""
        with (
            RequestStore(self.bq["BQ_API_DATABASE_URL"]) as store,
            store.exclusive(f"collection:{self.collection_id}"),
        ):
            yield

    # ------------------------------------------------------------------ the outcome

    def assert_exactly_once(self, failed_runs: dict[str, int]) -> None:
        """Every request finished with one successful run, after `failed_runs[id]` runs that
        ended without an outcome (each one attempt); one item and one object each."""
        done = self.api.wait_done(list(failed_runs))
        s3 = boto3.client(
            "s3",
            endpoint_url=self.bq["BQ_S3_ENDPOINT_URL"],
            region_name=self.bq["BQ_S3_REGION"],
            aws_access_key_id=self.bq["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.bq["AWS_SECRET_ACCESS_KEY"],
        )
        listed = s3.list_objects_v2(Bucket=self.bq["BQ_S3_BUCKET"], Prefix="io/")
        objects = [o["Key"] for o in listed.get("Contents", [])]
        items = http.get(
            f"{self.bq['BQ_STAC_API_URL']}/collections/{self.collection_id}/items",
            params={"limit": 1000},
            timeout=30,
        ).json()["features"]
        counts = {}
        for request_id, failures in failed_runs.items():
            status = done[request_id]
            name = status["_param"]["name"]
            runs = self.api.runs_of(request_id)
            statuses = [run.status for run in runs]
            counts[request_id] = {
                "runs": [s.value for s in statuses],
                "attempts": [run.tags.get(ATTEMPT_TAG) for run in runs],
                "items": sum(1 for item in items if item["id"] == name),
                "objects": sum(1 for key in objects if key.endswith(f"/{name}.tif")),
            }
            assert status["_operation"] == "PROCESS FINISHED", (status, counts[request_id])
            assert statuses.count(dg.DagsterRunStatus.SUCCESS) == 1, counts[request_id]
            assert statuses[-1] == dg.DagsterRunStatus.SUCCESS, counts[request_id]
            assert len(runs) == failures + 1, counts[request_id]
            # One run per attempt, in order: no attempt ran twice.
            assert counts[request_id]["attempts"] == [str(n) for n in range(1, len(runs) + 1)]
            assert status["_attempt"] == len(runs) and len(status["_retries"]) == failures
            assert status["_run_id"] == runs[-1].run_id
            assert counts[request_id]["items"] == 1 and counts[request_id]["objects"] == 1
        assert len(items) == len(failed_runs), [item["id"] for item in items]
        print({request_id[:8]: count for request_id, count in counts.items()})


@pytest.fixture
def crash(tmp_path: Path, services_env: dict[str, str], mirror: LocalHttpHost) -> Iterator[Crash]:
    collection_id = f"api-once-{uuid.uuid4().hex[:8]}"
    with (
        temporary_collection(services_env["BQ_STAC_API_URL"], collection_id),
        on_services(services_env, tmp_path / "bq", f"{mirror.base_url}/data/") as bq,
        api_stack(tmp_path, bq) as api,
    ):
        config_path = api.dagster_home / "dagster.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["run_monitoring"].update(
            start_timeout_seconds=START_TIMEOUT_SECONDS, poll_interval_seconds=5
        )
        config_path.write_text(yaml.safe_dump(config))
        instance = dg.DagsterInstance.from_config(str(api.dagster_home))
        try:
            yield Crash(api, mirror, collection_id, services_env, bq, instance)
        finally:
            instance.dispose()


def test_accepted_and_queued_requests_survive_every_process_killed(crash: Crash):
    api = crash.api
    api.start_api()
    api.start_daemon()
    crash.wait_until_healthy()

    with crash.collection_held():
        # accepted: the daemon frozen, its sensor cannot pick the request up meanwhile.
        crash.freeze_daemon()
        accepted = crash.accept()
        crash.kill_code_servers()
        crash.restart_api()
        assert crash.run_of(accepted) is None and api.status(accepted)["_state"] == "accepted"
        os.kill(crash.daemon, signal.SIGCONT)

        # run queued: two requests hold both run slots at their last step.
        holder = crash.accept()
        for request_id in (accepted, holder):
            crash.wait_until_published(request_id)
        queued = crash.accept()
        crash.wait_for_run(queued, {dg.DagsterRunStatus.QUEUED})
        crash.restart_api()
        crash.kill_code_servers()
        crash.wait_until_healthy()  # the daemon reaches the new code server
        assert crash.existing_run(queued).status == dg.DagsterRunStatus.QUEUED
        # The daemon's group: the two run workers at "item published" die with it.
        crash.restart_daemon()
        assert crash.existing_run(queued).status == dg.DagsterRunStatus.QUEUED
    crash.assert_exactly_once({accepted: 1, holder: 1, queued: 0})


def test_requests_whose_run_was_starting_are_processed_exactly_once(crash: Crash):
    """A run killed before its worker reported STARTED: what issue 18 lost (the run failed by
    run monitoring, its run key blocking any retry). Each such run fails: the code server answers
    the launch only once its worker has started, so killing the server or the worker breaks the
    launch (Dagster fails the run; a worker resumed later refuses a failed run), and a run left
    STARTING by a killed daemon is failed by run monitoring. The status says how many attempts a
    request took and why each retry was needed, as a client reads it."""
    crash.api.start_api()
    crash.api.start_daemon()
    crash.wait_until_healthy()
    failed_runs = {}
    by_victim = {}
    for victim, failures in (("run worker", 1), ("daemon group", 1), ("code server", 1)):
        before = crash.workers()
        request_id = crash.accept()
        crash.wait_for_run(request_id, {dg.DagsterRunStatus.STARTING})
        worker = crash.new_worker(before)
        os.kill(worker, signal.SIGSTOP)  # frozen while loading: it cannot report STARTED
        assert crash.existing_run(request_id).status == dg.DagsterRunStatus.STARTING, victim
        if victim == "run worker":
            os.kill(worker, signal.SIGKILL)
        elif victim == "daemon group":
            crash.restart_daemon()  # the run stays STARTING: run monitoring fails it
        else:
            crash.kill_code_servers()
            os.kill(worker, signal.SIGCONT)
        failed_runs[request_id] = failures
        by_victim[victim] = request_id
        crash.api.wait_done([request_id])
    crash.assert_exactly_once(failed_runs)

    status = http.get(
        f"{crash.api.base_url}/status",
        params={"id": by_victim["daemon group"]},
        headers=AUTH,
        timeout=30,
    ).json()
    assert status["_operation"] == "PROCESS FINISHED" and status["_attempt"] == 2, status
    [retry] = status["_retries"]
    assert retry["attempt"] == 1 and "to start" in retry["reason"], retry


def test_requests_whose_run_had_started_are_processed_exactly_once(crash: Crash):
    crash.api.start_api()
    crash.api.start_daemon()
    crash.wait_until_healthy()
    failed_runs = {}
    for victim, failures in (
        ("run worker", 1),
        ("daemon group", 1),
        ("code server", 0),
        ("api", 0),
    ):
        request_id = crash.accept()
        source = crash.source_path(request_id)
        crash.mirror.delay(source, 15)  # its first download hangs: the run is mid-way
        crash.wait_until_asked(source, times=2)  # the API's HEAD, then its run's request
        run = crash.existing_run(request_id)
        assert run.status == dg.DagsterRunStatus.STARTED and api_state(crash, request_id) == (
            "running",
            "fetch",
        ), victim
        worker = run_worker_pid(crash.instance, run.run_id)
        if victim == "run worker":
            assert worker is not None
            os.kill(worker, signal.SIGKILL)
        elif victim == "daemon group":
            crash.restart_daemon()
        elif victim == "code server":
            crash.kill_code_servers()
        else:
            crash.restart_api()
        failed_runs[request_id] = failures
        crash.api.wait_done([request_id])
    crash.assert_exactly_once(failed_runs)


def test_requests_whose_item_was_published_are_processed_exactly_once(crash: Crash):
    crash.api.start_api()
    crash.api.start_daemon()
    crash.wait_until_healthy()
    failed_runs = {}
    for victim, failures in (("run worker", 1), ("daemon group", 1), ("code server", 0)):
        with crash.collection_held():
            request_id = crash.accept()
            crash.wait_until_published(request_id)
            name = crash.api.status(request_id)["_param"]["name"]
            item = http.get(
                f"{crash.bq['BQ_STAC_API_URL']}/collections/{crash.collection_id}/items/{name}",
                timeout=30,
            )
            assert item.status_code == 200, victim  # published; the request not finished
            assert crash.api.status(request_id)["_state"] == "running"
            run = crash.existing_run(request_id)
            worker = run_worker_pid(crash.instance, run.run_id)
            if victim == "run worker":
                assert worker is not None
                os.kill(worker, signal.SIGKILL)
            elif victim == "daemon group":
                crash.restart_daemon()
            else:
                crash.kill_code_servers()
            if failures:  # its run ends failed while the lock is still held
                crash.wait_for_run(request_id, {dg.DagsterRunStatus.FAILURE})
        failed_runs[request_id] = failures
        crash.api.wait_done([request_id])
    crash.assert_exactly_once(failed_runs)


def readable_now(database: Path) -> bool:
    """Whether a reader gets the SQLite `database` at once (no writer holds it locked)."""
    try:  # opened as the code server opens it (a new connection), reading only
        with contextlib.closing(sqlite3.connect(database, timeout=0)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def api_state(crash: Crash, request_id: str) -> tuple[str, str | None]:
    status = crash.api.status(request_id)
    return status["_state"], status["_step"]
