"""Backfills spread over two real Celery workers (a Redis of the test's own as broker and result
backend, `bq_pipelines_testkit/redis_server.py`), run by a real webserver + daemon on the
production instance (deploy/dagster.yaml on a fresh PostgreSQL database), publishing to the real
services (moto S3, stac-fastapi-pgstac).

Each worker has its own staging folder (`BQ_WORK_DIR`): nothing is shared on disk between them.
- both workers execute batches, and the catalog equals a single-process run's;
- a worker killed (SIGKILL, its whole process group) in the middle of a batch, at the worst
  moment (while it holds the lock under which workers look for abandoned steps): the broker hands
  the batch to the other worker once the visibility timeout and the lock's expiry have passed, the
  run and the backfill finish, and every item is in the catalog once, none reported created twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import redis
from kombu.transport.redis import Channel as RedisChannel  # its keys and defaults

from bq_pipelines.lib.waiting import wait_until
from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.orchestration.resources import catalog_for
from bq_pipelines.runtime.executors import worker_app
from bq_pipelines.settings import Settings
from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.dagster_processes import (
    LAUNCH_BACKFILL,
    Deployment,
    write_workspace,
)
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.redis_server import redis_server
from bq_pipelines_testkit.runs import run_dataset
from bq_pipelines_testkit.services import python_path
from bq_pipelines_tests.backfill_stack import MIRROR_PREFIX, serve_sources

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VARIABLE = "tas"
MONTHS, BATCH_SIZE = 8, 2  # 4 runs of 2 partitions
# Each source request waits this long, so a batch lasts seconds: two batches overlap on the two
# workers, and a worker can be killed in the middle of one.
SOURCE_DELAY_S = 1.5
VISIBILITY_TIMEOUT_S = 20  # longer than a batch here (~6 s), short enough for a test
WORKERS = ("worker-a", "worker-b")
BACKFILL_TIMEOUT_S = 240.0


@dataclass
class CeleryStack:
    deployment: Deployment
    dataset_id: str
    workers: dict[str, Any]  # name -> Popen
    urls: dict[str, str]
    settings: Settings

    @property
    def instance_home(self) -> str:
        return self.deployment.env["DAGSTER_HOME"]

    def keys(self) -> list[str]:
        return [location.partition_key(i, VARIABLE) for i in range(MONTHS)]

    def launch_backfill(self) -> str:
        launched = self.deployment.graphql(
            LAUNCH_BACKFILL,
            params={
                "partitionNames": self.keys(),
                "assetSelection": [
                    {"path": key.path} for key in DatasetKeys(self.dataset_id).partitioned
                ],
                "title": f"{self.dataset_id} over Celery",
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        return str(launched["backfillId"])

    @property
    def broker_url(self) -> str:
        return self.deployment.env["BQ_CELERY_BROKER_URL"]

    def wait_for_backfill(self, backfill_id: str) -> dict[str, Any]:
        # A worker killed on purpose is one of the deployment's processes: not the end.
        return self.deployment.wait_for_backfill(
            backfill_id,
            BACKFILL_TIMEOUT_S,
            over_if_a_process_exits=False,
            state=lambda: broker_state(self.broker_url),
        )


def broker_state(broker_url: str) -> str:
    """What the broker holds: steps queued, steps delivered and not acknowledged (with their
    age), and the restore lock's remaining life; printed when a backfill does not finish."""
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    queued = {key: client.llen(key) for key in client.keys("dagster*")}
    now = time.time()
    # (tag, delivery time) pairs
    delivered: list[Any] = client.zrange(RedisChannel.unacked_index_key, 0, -1, withscores=True)
    unacked = {str(tag): f"{now - float(score):.0f} s ago" for tag, score in delivered}
    return (
        f"--- broker: queued {queued}, delivered and not acknowledged {unacked}, "
        f"restore lock expires in {client.ttl(RedisChannel.unacked_mutex_key)} s"
    )


def hold_restore_lock(env: dict[str, str]) -> None:
    """Take the lock a worker holds while it looks for abandoned steps (kombu's Redis `Mutex`),
    for as long as a worker would keep it if it died holding it: the workers' configured expiry,
    else kombu's default."""
    options = worker_app(env).conf.broker_transport_options
    expiry = options.get("unacked_mutex_expire", RedisChannel.unacked_mutex_expire)
    client = redis.Redis.from_url(env["BQ_CELERY_BROKER_URL"])
    lock = client.lock(RedisChannel.unacked_mutex_key, timeout=expiry)
    # A living worker may be in a sweep (milliseconds): wait for it to end.
    assert lock.acquire(blocking=True, blocking_timeout=10), "the restore lock stayed taken"


def ping_workers(env: dict[str, str], names: tuple[str, ...], timeout: float = 90.0) -> None:
    """Wait until every named worker answers a broadcast ping through the broker."""
    app = worker_app(env)
    answered: set[str] = set()

    def all_answer() -> bool:
        replies = app.control.ping(timeout=1.0) or []  # a second's wait for the replies
        answered.clear()
        answered.update(name.split("@")[0] for reply in replies for name in reply)
        return set(names) <= answered

    wait_until(
        all_answer,
        timeout=timeout,
        what=f"workers {names} answering a ping",
        poll=0,
        detail=lambda: f"workers {set(names) - answered} did not answer",
    )


@pytest.fixture
def broker_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def celery_stack(
    tmp_path: Path,
    broker_url: str,
    http_host: LocalHttpHost,
    production_instance_env: dict[str, str],
    services_env: dict[str, str],
    s3_bucket: str,
    unique_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[CeleryStack]:
    for name, value in production_instance_env.items():  # the test reads the instance too
        monkeypatch.setenv(name, value)
    dataset_id = f"chelsa-celery-{unique_id}"
    urls = serve_sources(http_host, MONTHS, (VARIABLE,))
    for url in urls.values():
        http_host.delay(url.removeprefix(http_host.base_url), SOURCE_DELAY_S, times=None)
    bq = {
        **{k: v for k, v in services_env.items() if k.startswith(("BQ_", "AWS_"))},
        "BQ_HOME": str(tmp_path / "bq"),
        "BQ_S3_BUCKET": s3_bucket,
        "BQ_PUBLIC_BASE_URL": f"{services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}",
        "BQ_LOCAL_DATA_ROOT": str(tmp_path / "sources"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={http_host.url(MIRROR_PREFIX)}",
        "BQ_EXECUTOR": "celery",
        "BQ_CELERY_BROKER_URL": broker_url,
        "BQ_CELERY_BACKEND_URL": broker_url,
        "BQ_CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "BQ_TEST_DATASET_ID": dataset_id,
        "BQ_TEST_MONTHS": str(MONTHS),
        "BQ_TEST_BATCH_SIZE": str(BATCH_SIZE),
    }
    workspace = write_workspace(
        tmp_path / "workspace.yaml", "bq_pipelines_testkit.backfill_location", "chelsa_celery"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    short_tmp = Path(tempfile.mkdtemp(prefix="bqcel-"))  # code server sockets: short paths
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("BQ_", "DAGSTER_"))}
    env = {
        **inherited,
        **bq,
        **production_instance_env,
        "TMPDIR": str(short_tmp),
        "PYTHONPATH": python_path(),
    }
    deployment = Deployment(env=env, workspace=workspace, logs=logs)
    try:
        workers = {
            name: deployment.start(
                "celery",
                *("-A", "bq_pipelines.runtime.celery_worker", "worker", "-Q", "dagster"),
                *("--concurrency", "1", "--hostname", f"{name}@%h", "--loglevel", "INFO"),
                log_name=name,
                # Its own staging folder: the workers share no disk.
                env={"BQ_WORK_DIR": str(tmp_path / name / "work")},
            )
            for name in WORKERS
        }
        deployment.serve_from_code_server("bq_pipelines_testkit.backfill_location", "chelsa_celery")
        deployment.start_webserver()
        deployment.wait_until_loaded()
        ping_workers(env, WORKERS)
        yield CeleryStack(deployment, dataset_id, workers, urls, Settings.from_env(bq))
    finally:
        deployment.stop()
        shutil.rmtree(short_tmp, ignore_errors=True)


def kill_process_group(process: Any) -> None:
    """SIGKILL a worker and its pool processes, as when its machine goes away."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


# --- what the instance and the catalog recorded ---------------------------------------------


def backfill_runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id})))


def run_failures(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> list[str]:
    """Why each of `runs` failed, if one did (the messages of its RUN_FAILURE events)."""
    messages = []
    for run in runs:
        for record in instance.get_records_for_run(
            run_id=run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
        ).records:
            event = record.event_log_entry.dagster_event
            messages.append(f"{run.run_id[:8]} {run.status.value}: {event and event.message}")
    return messages


def step_workers(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Celery workers that started the run's step, in order (dagster-celery's engine event)."""
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ).records
    names = []
    for record in records:
        event = record.event_log_entry.dagster_event
        metadata = event.engine_event_data.metadata if event is not None else {}
        if "Celery worker" not in metadata:
            continue
        names.append(str(metadata["Celery worker"].value).split("@")[0])
    return names


def normalized_items(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Items without what depends on where they were published (links, hrefs, collection)."""
    normalized = {}
    for item in items:
        copy = {k: v for k, v in item.items() if k not in ("links", "collection")}
        copy["assets"] = {
            key: {k: v for k, v in asset.items() if k != "href"}
            for key, asset in item["assets"].items()
        }
        normalized[item["id"]] = copy
    return normalized


def single_process_items(tmp_path: Path, stack: CeleryStack) -> dict[str, dict[str, Any]]:
    """The same partitions materialized in this process into a static catalog."""
    settings = Settings.from_env(
        {
            "BQ_HOME": str(tmp_path / "single"),
            "BQ_SOURCE_BASE_URLS": stack.deployment.env["BQ_SOURCE_BASE_URLS"],
        }
    )
    declaration = location.chelsa_like(stack.dataset_id, MONTHS, BATCH_SIZE)
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_dataset(declaration, settings, instance, stack.keys())
    publisher = catalog_for(settings).publisher()
    return normalized_items(list(publisher.iter_items(stack.dataset_id)))


def published_items(stack: CeleryStack) -> list[dict[str, Any]]:
    publisher = catalog_for(stack.settings).publisher()
    return list(publisher.iter_items(stack.dataset_id))


def item_outcomes(instance: dg.DagsterInstance, stack: CeleryStack) -> dict[str, int]:
    """created/updated/unchanged summed over every materialization of every partition."""
    key = DatasetKeys(stack.dataset_id).step("stac_item")
    totals = {"created": 0, "updated": 0, "unchanged": 0}
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000)
    for record in records.records:
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        for outcome in totals:
            totals[outcome] += int(metadata[outcome].value)  # type: ignore[arg-type]
    return totals


# --- the tests --------------------------------------------------------------------------------


def test_backfill_runs_spread_over_two_celery_workers_and_publish_what_one_process_does(
    tmp_path: Path, celery_stack: CeleryStack
):
    stack = celery_stack
    backfill_id = stack.launch_backfill()
    stack.deployment.start_daemon()
    backfill = stack.wait_for_backfill(backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, stack.deployment.log_tail())

    instance = dg.DagsterInstance.from_config(stack.instance_home)
    try:
        runs = backfill_runs(instance, backfill_id)
        assert len(runs) == MONTHS // BATCH_SIZE
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        workers_by_run = {run.run_id: step_workers(instance, run.run_id) for run in runs}
        assert all(len(names) == 1 for names in workers_by_run.values()), workers_by_run
        for record in instance.get_run_records(
            dg.RunsFilter(tags={"dagster/backfill": backfill_id})
        ):
            stats = instance.get_run_stats(record.dagster_run.run_id)
            print(  # for deploy/README.md's figures: run overhead around the batch's step
                f"run {record.dagster_run.run_id[:8]}: launched->end "
                f"{(record.end_time or 0) - (record.create_timestamp.timestamp()):.1f} s, "
                f"start->end {(stats.end_time or 0) - (stats.start_time or 0):.1f} s, "
                f"worker {workers_by_run[record.dagster_run.run_id]}"
            )
        # Both workers executed batches.
        assert {names[0] for names in workers_by_run.values()} == set(WORKERS), workers_by_run
        stac_item = DatasetKeys(stack.dataset_id).step("stac_item")
        assert instance.get_materialized_partitions(stac_item) == set(stack.keys())
        assert item_outcomes(instance, stack) == {"created": MONTHS, "updated": 0, "unchanged": 0}
    finally:
        instance.dispose()

    # Each worker staged its batches in its own folder (emptied after each partition); the
    # default one, which a shared disk would have meant, was never used.
    assert all((tmp_path / name / "work").is_dir() for name in WORKERS)
    assert not (tmp_path / "bq" / "work").exists()

    published = normalized_items(published_items(stack))
    assert published == single_process_items(tmp_path, stack)


def test_a_worker_killed_mid_batch_leaves_the_backfill_finished_by_the_other_without_duplicates(
    celery_stack: CeleryStack,
):
    stack = celery_stack
    backfill_id = stack.launch_backfill()
    stack.deployment.start_daemon()

    # Wait until worker-a is in the middle of a batch (its step started, not finished), kill it.
    victim = WORKERS[0]
    instance = dg.DagsterInstance.from_config(stack.instance_home)
    try:

        def victims_batch() -> str | None:
            for run in backfill_runs(instance, backfill_id):
                finished = instance.get_records_for_run(
                    run_id=run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
                ).records
                if step_workers(instance, run.run_id) == [victim] and not finished:
                    return run.run_id
            return None

        killed_run = wait_until(
            victims_batch,
            timeout=BACKFILL_TIMEOUT_S,
            what=f"a batch of {victim} in progress",
            poll=0.2,
            detail=stack.deployment.log_tail,
        )
        # Killed in the middle of its sweep for abandoned steps: the lock it held stays taken
        # until it expires, and no worker can hand a step over before.
        hold_restore_lock(stack.deployment.env)
        kill_process_group(stack.workers[victim])

        backfill = stack.wait_for_backfill(backfill_id)
        assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, stack.deployment.log_tail())
        runs = backfill_runs(instance, backfill_id)
        # Recovered inside the run: no extra run (a run failed outside its step is retried).
        assert len(runs) == MONTHS // BATCH_SIZE, run_failures(instance, runs)
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        # The killed batch was handed over to the surviving worker, which finished it.
        assert step_workers(instance, killed_run) == [victim, WORKERS[1]]
        stac_item = DatasetKeys(stack.dataset_id).step("stac_item")
        assert instance.get_materialized_partitions(stac_item) == set(stack.keys())
        # Nothing published twice: items the killed worker had published before dying were
        # found unchanged on the second attempt, never created again.
        outcomes = item_outcomes(instance, stack)
        assert outcomes["created"] + outcomes["unchanged"] == MONTHS, outcomes
        assert outcomes["updated"] == 0, outcomes
    finally:
        instance.dispose()

    published = published_items(stack)
    ids = [item["id"] for item in published]
    assert sorted(ids) == sorted({location.item_id(i, VARIABLE) for i in range(MONTHS)})
