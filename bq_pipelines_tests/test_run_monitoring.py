"""Stuck runs: runs whose worker and code server are killed (`kill -9`) are failed by the daemon,
and the run queue (2 at once in the local dagster.yaml) frees for the next run.

A real `dagster-daemon` on the project's dagster.yaml (run queue, run monitoring) and the test code
location of `bq_pipelines_testkit/backfill_location.py`. Two runs hang on a slow source host; their
run workers and the code server that launched them are killed, as a crash or a restarted `dagster
dev` would. Nobody is left to fail them but the `dead_run_workers` sensor; a third run, queued
behind them, must then start and succeed.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from bq_pipelines.lib.waiting import wait_until
from bq_pipelines.orchestration.keys import op_name
from bq_pipelines.runtime.launch import RANGE_END_TAG, RANGE_START_TAG
from bq_pipelines.runtime.monitoring import run_worker_pid
from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.dagster_processes import BIN, Deployment
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_tests.backfill_stack import serve_sources, sqlite_deployment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300.0
MONTHS = 3


@pytest.fixture
def deployment(tmp_path: Path, http_host: LocalHttpHost) -> Iterator[Deployment]:
    with sqlite_deployment(tmp_path, http_host, months=MONTHS, batch_size=1) as started:
        yield started


def queue_run(deployment: Deployment, partition_key: str) -> str:
    """Submit a run of one partition to the instance's run queue, as the UI would."""
    run_id = str(uuid.uuid4())
    tags = {RANGE_START_TAG: partition_key, RANGE_END_TAG: partition_key}
    launched = subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "launch",
            "-w",
            str(deployment.workspace),
            "-j",
            op_name(location.DEFAULT_ID, "job"),
            "-o",
            op_name(location.DEFAULT_ID, "partitions"),
            "--run-id",
            run_id,
            "--tags",
            json.dumps(tags),
        ],
        env=deployment.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    return run_id


def parent_pid(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_pid(int(entry.name)) == pid:
                    children.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return [grandchild for child in children for grandchild in [child, *descendants(child)]]


def wait_for_status(instance, run_id: str, statuses: set[dg.DagsterRunStatus], deployment) -> None:
    def reached() -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status in statuses

    def last_status() -> str:
        run = instance.get_run_by_id(run_id)
        return f"run {run_id}: {run.status if run else None}\n{deployment.log_tail()}"

    what = f"run {run_id} in {statuses}"
    wait_until(reached, timeout=TIMEOUT, what=what, poll=0.5, detail=last_status)


@pytest.mark.slow
def test_runs_whose_worker_and_code_server_were_killed_are_failed_and_the_queue_frees(
    http_host: LocalHttpHost, deployment: Deployment
) -> None:
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 2
    urls = serve_sources(http_host, MONTHS, ("tas",))
    stuck_keys = [location.partition_key(i, "tas") for i in range(2)]
    for key in stuck_keys:  # these sources never answer in time: the runs hang on them
        http_host.delay(urls[key].removeprefix(http_host.base_url), 120, times=None)
    free_key = location.partition_key(2, "tas")

    # Queued first, the daemon started after: two processes creating a fresh SQLite instance at
    # once race on its schema. The queue is first in, first out: the stuck runs start first.
    stuck = [queue_run(deployment, key) for key in stuck_keys]
    queued = queue_run(deployment, free_key)
    deployment.start_daemon()
    instance = dg.DagsterInstance.from_config(deployment.env["DAGSTER_HOME"])
    try:
        for run_id in stuck:
            wait_for_status(instance, run_id, {dg.DagsterRunStatus.STARTED}, deployment)
        # The queue is full: the third run waits.
        queued_run = instance.get_run_by_id(queued)
        assert queued_run is not None and queued_run.status == dg.DagsterRunStatus.QUEUED

        workers = []
        for run_id in stuck:
            pid = wait_until(
                functools.partial(run_worker_pid, instance, run_id),
                timeout=TIMEOUT,
                what=f"run {run_id}'s worker",
                poll=0.5,
                detail=deployment.log_tail,
            )
            workers.append(pid)
        code_servers = {parent_pid(pid) for pid in workers}
        victims = {*code_servers, *workers, *(d for pid in workers for d in descendants(pid))}
        killed_at = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)

        for run_id in stuck:
            wait_for_status(instance, run_id, {dg.DagsterRunStatus.FAILURE}, deployment)
        failed_after = time.monotonic() - killed_at
        wait_for_status(instance, queued, {dg.DagsterRunStatus.SUCCESS}, deployment)
        print(
            f"killed {len(victims)} processes (2 run workers, their steps, the code server); "
            f"both runs failed {failed_after:.1f} s later; the queued run then succeeded"
        )
        for run_id in stuck:
            failures = instance.get_records_for_run(
                run_id=run_id, of_type=dg.DagsterEventType.RUN_FAILURE
            ).records
            event = failures[-1].event_log_entry.dagster_event
            assert event is not None
            message = event.message or ""
            assert "run worker" in message and "is gone" in message, message
    finally:
        instance.dispose()


@pytest.mark.slow
def test_a_killed_run_workers_step_process_dies_with_it_and_publishes_nothing(
    http_host: LocalHttpHost, deployment: Deployment
) -> None:
    """kill -9 of a run worker alone (not its process group): the step process it started
    (multiprocess executor) must not go on to publish for a run that is marked failed. The
    project's executor runs a chain of steps in the run worker; a plan whose steps can run at
    once gets step processes, which the location gives every run here."""
    deployment.env["BQ_TEST_STEP_PROCESSES"] = "1"
    urls = serve_sources(http_host, 1, ("tas",))
    key = location.partition_key(0, "tas")
    source_path = urls[key].removeprefix(http_host.base_url)
    http_host.delay(source_path, 45, times=None)  # the step waits on its download meanwhile
    run_id = queue_run(deployment, key)
    deployment.start_daemon()
    instance = dg.DagsterInstance.from_config(deployment.env["DAGSTER_HOME"])
    try:
        wait_for_status(instance, run_id, {dg.DagsterRunStatus.STARTED}, deployment)

        def fetching_worker() -> int | None:
            worker = run_worker_pid(instance, run_id)
            return worker if worker is not None and asked(http_host, source_path) else None

        worker = wait_until(
            fetching_worker,
            timeout=TIMEOUT,
            what=f"run {run_id}'s worker asking for its source",
            poll=0.5,
            detail=deployment.log_tail,
        )
        steps = descendants(worker)
        assert steps, "the multiprocess executor started no step process"

        os.kill(worker, signal.SIGKILL)

        wait_for_status(instance, run_id, {dg.DagsterRunStatus.FAILURE}, deployment)

        def alive() -> list[int]:
            return [pid for pid in steps if Path(f"/proc/{pid}").exists() and not zombie(pid)]

        wait_until(
            lambda: not alive(),
            timeout=20,  # well before the source answers (45 s)
            what="the step processes ending with their worker",
            poll=0.2,
            detail=lambda: f"step processes {alive()} outlived their worker",
        )
    finally:
        instance.dispose()
        http_host.reset()  # the source answers at once now: nothing is left to fetch it
    home = Path(deployment.env["BQ_HOME"])
    item_id = location.item_id(0, "tas")
    assert not (home / "objects" / "io" / location.DEFAULT_ID / f"{item_id}.tif").exists()
    assert not list((home / "catalog").rglob(f"{item_id}.json"))


def asked(http_host: LocalHttpHost, path: str) -> bool:
    """Whether the source was requested yet (a HEAD, to probe it, or its download)."""
    return http_host.count("HEAD", path) + http_host.count("GET", path) > 0


def zombie(pid: int) -> bool:
    """Ended, not yet reaped by its parent (State Z in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status
