"""The executor of the code location's runs, chosen by `BQ_EXECUTOR`, and the Celery settings
shared by the executor (which sends steps) and the workers (which run them).

A dataset run is one step per batch of partitions (factory.py): with Celery, each run's step goes
to whichever worker is free, so a backfill's runs spread over the workers, and a partition's
download, conversion, upload and publication stay on one worker's disk. Otherwise the steps of such
a run, which can only run one after the other, run in the run worker (`ChainsInTheRunWorker`).

dagster-celery (with Celery, kombu and Dagster's CLI) is imported only when Celery is chosen: every
process that loads the code location (code servers, run workers, step processes) paid ~0.3 s of
CPU for it otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import dagster as dg

from bq_pipelines.settings import CELERY_BACKEND_ENV, CELERY_BROKER_ENV, Settings

if TYPE_CHECKING:
    from celery import Celery


RESTORE_LOCK_EXPIRY_S = 30


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings on top of dagster-celery's defaults (prefetch 1, the `dagster` queue)."""
    from dagster_celery.config import DEFAULT_CONFIG

    return {
        **DEFAULT_CONFIG,
        # A step is acknowledged when it ends, not when it is received: if its worker dies, the
        # broker hands the step to another worker once `visibility_timeout` has passed. Steps are
        # idempotent (unchanged objects are not re-uploaded, published items are compared), so a
        # re-run after a crash publishes nothing twice.
        "task_acks_late": True,
        # A pool process killed under a living worker (out of memory) fails the step instead of
        # requeueing it: a batch that always exhausts memory must not loop between workers.
        "task_reject_on_worker_lost": False,
        "broker_transport_options": {
            **cast(dict[str, Any], DEFAULT_CONFIG["broker_transport_options"]),
            "visibility_timeout": settings.celery_visibility_timeout_s,
            # Look for such abandoned steps every 10 s (kombu's default: every 100 s).
            "unacked_restore_throttle": 1,
            # A worker sweeps under a Redis lock that lives this long if the worker dies holding
            # it (kombu's default: 300 s, so a worker killed mid-sweep stopped every other
            # worker from handing its steps over for five minutes). A sweep takes milliseconds,
            # and two sweeps at once restore nothing twice (kombu restores each step in a
            # transaction).
            "unacked_mutex_expire": RESTORE_LOCK_EXPIRY_S,
        },
        "broker_connection_retry_on_startup": True,
    }


class ChainsInTheRunWorker(dg.Executor):
    """Dagster's multiprocess executor, except for a plan whose steps can only run one after the
    other (a dataset run: its batch step, then, in the last batch, the collection's step): those
    steps run in the run worker itself.

    A step process loads the code location again (~2.5 s of CPU, ~3 s before the step starts,
    a few hundred MB) and gains a chain nothing: it could not run beside another step. What it
    gave, isolation from the worker, the run worker already gives: a step that crashes it ends
    the run, which `dead_run_workers` then reports failed (runtime/monitoring.py), and the run
    retries re-execute it, as after a crashed step process."""

    def __init__(self, several_at_once: dg.Executor, in_the_worker: dg.Executor) -> None:
        self._several_at_once = several_at_once
        self._in_the_worker = in_the_worker

    @property
    def retries(self) -> Any:
        return self._several_at_once.retries

    @property
    def step_dependency_config(self) -> Any:  # both executors have the run config's
        return self._several_at_once.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        levels = execution_plan.get_steps_to_execute_by_level()
        chain = all(len(level) == 1 for level in levels)
        executor = self._in_the_worker if chain else self._several_at_once
        yield from executor.execute(plan_context, execution_plan)


def _create(definition: dg.ExecutorDefinition, context: dg.InitExecutorContext) -> dg.Executor:
    create = definition.executor_creation_fn
    assert create is not None, f"{definition.name} has no executor"
    return create(context)


def _chains_in_the_run_worker(init_context: dg.InitExecutorContext) -> dg.Executor:
    config = init_context.executor_config
    several_at_once = _create(dg.multi_or_in_process_executor, init_context)
    multiprocess = config.get("multiprocess")
    if not isinstance(multiprocess, Mapping):  # `in_process` chosen: every plan in the worker
        return several_at_once
    in_the_worker_config = {
        "retries": multiprocess["retries"],
        "step_dependency_config": multiprocess.get("step_dependency_config"),
    }
    in_the_worker = _create(
        dg.in_process_executor,
        dg.InitExecutorContext(
            job=init_context.job,
            executor_def=dg.in_process_executor,
            executor_config=in_the_worker_config,
            instance=init_context.instance,
        ),
    )
    return ChainsInTheRunWorker(several_at_once, in_the_worker)


# Configured as Dagster's default executor is (`multiprocess` or `in_process`, same fields).
multi_or_in_process_chains_in_worker = dg.ExecutorDefinition(
    name="multi_or_in_process_executor",
    config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
    requirements=dg.multi_or_in_process_executor.get_requirements,
    executor_creation_fn=_chains_in_the_run_worker,
    description=ChainsInTheRunWorker.__doc__,
)


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """Dagster's default (multiprocess, or in-process on request) with chains of steps in the
    run worker, or Celery with broker and backend read from the environment when a run starts
    (the broker URL may carry a password)."""
    if settings.executor != "celery":
        return multi_or_in_process_chains_in_worker
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {
            "broker": {"env": CELERY_BROKER_ENV},
            "backend": {"env": CELERY_BACKEND_ENV},
            "config_source": celery_config(settings),
        },
        name="celery",
    )


def worker_app(env: Mapping[str, str]) -> Celery:
    """The Celery app a worker runs: dagster-celery's step task, with the executor's settings."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    settings = Settings.from_env({**env, "BQ_EXECUTOR": "celery"})
    app = make_app(
        CeleryExecutor.for_cli(
            broker=env[CELERY_BROKER_ENV],
            backend=env[CELERY_BACKEND_ENV],
            config_source=celery_config(settings),
        ).app_args()
    )
    create_task(app)
    return app
