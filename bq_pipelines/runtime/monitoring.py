"""Runs whose run worker is gone (`kill -9`, out of memory, a code server restarted under its
runs) are failed, so they stop holding the run queue.

Dagster's run monitoring (`run_monitoring` in dagster.yaml) fails runs stuck STARTING or
CANCELING and runs over their maximum runtime, but checks a STARTED run's worker only with
launchers that can (Kubernetes, ECS, Celery's launcher). With the default launcher (the local
instance, the compose deployment), run workers are processes of the code server that launched
them: that server fails a child that dies, unless it died too, or was restarted, or exited
after a CLI launch. Then the run stays STARTED for ever. This module covers that case: a STARTED
run whose worker (the pid of Dagster's own "Started process for run" event) no longer exists is
reported failed, by the `dead_run_workers` sensor (every 30 s under the daemon) and by the CLI
while it waits for its runs.

Only with `DefaultRunLauncher`: its run workers run on the machine (the container) of the code
server that evaluates the sensor, so a pid that does not exist there is a dead worker.

The other way round, a step process of the multiprocess executor (a child of its run worker)
would outlive a killed worker and go on publishing after its run was marked failed:
`die_with_run_worker` has the kernel kill it with its worker (`lib/processes.py`).
"""

from __future__ import annotations

import os

import dagster as dg

from bq_pipelines.lib.processes import die_with_parent

SENSOR_NAME = "dead_run_workers"
STARTED_MESSAGE = "Started process for run"


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid Dagster recorded for the run's worker process, if it recorded one."""
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or not (event.message or "").startswith(STARTED_MESSAGE):
            continue
        pid = event.engine_event_data.metadata.get("pid")
        if pid is not None and str(pid.value).isdigit():
            return int(str(pid.value))
    return None


def die_with_run_worker(context: dg.AssetExecutionContext) -> None:
    """In a step process of the multiprocess executor (a child of its run worker), be killed
    when the worker ends; nothing when the step runs in the worker itself (in-process
    executor), on a Celery worker, or in a run without a worker process (`execute_in_process`)."""
    worker = run_worker_pid(context.instance, context.run_id)
    if worker is not None and worker != os.getpid() and worker == os.getppid():
        die_with_parent(worker)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def fail_if_worker_gone(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Report the run failed if it is STARTED and its worker process is gone; whether it was.
    Only with the default run launcher (see the module's docstring)."""
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return False  # launchers that can check their workers do it in run monitoring
    run = instance.get_run_by_id(run_id)
    if run is None or run.status != dg.DagsterRunStatus.STARTED:
        return False
    pid = run_worker_pid(instance, run_id)
    if pid is None or process_exists(pid):
        return False
    # The worker may have ended the run between the two reads: only a run still STARTED fails.
    run = instance.get_run_by_id(run_id)
    if run is None or run.status != dg.DagsterRunStatus.STARTED:
        return False
    instance.report_run_failed(
        run,
        f"The run worker (pid {pid}) is gone (killed, out of memory, or its code server was "
        "restarted): the run is marked failed so it stops holding the run queue. Its "
        "partitions are safe to re-execute.",
    )
    return True


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail every STARTED run whose worker is gone; their run ids."""
    started = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    return [run.run_id for run in started if fail_if_worker_gone(instance, run.run_id)]


def dead_run_workers_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Fails STARTED runs whose run worker process is gone (kill -9, out of memory, a "
            "code server restarted under them), so they stop holding the run queue."
        ),
    )
    def dead_run_workers(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        failed = fail_dead_runs(context.instance)
        if failed:
            context.log.warning(f"failed {len(failed)} runs whose worker is gone: {failed}")
        return dg.SkipReason(f"{len(failed)} runs with a dead worker failed")

    return dead_run_workers
