"""The executor of the code location's runs, chosen by `BQ_EXECUTOR`, and the Celery settings
shared by the executor (which sends steps) and the workers (which run them).

A dataset run is one step per batch of partitions (factory.py): with Celery, each run's step goes
to whichever worker is free, so a backfill's runs spread over the workers, and a partition's
download, conversion, upload and publication stay on one worker's disk.

dagster-celery (with Celery, kombu and Dagster's CLI) is imported only when Celery is chosen: every
process that loads the code location (code servers, run workers, step processes) paid ~0.3 s of
CPU for it otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """Dagster's default (multiprocess, or in-process on request), or Celery with broker and
    backend read from the environment when a run starts (the broker URL may carry a password)."""
    if settings.executor != "celery":
        return dg.multi_or_in_process_executor
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
