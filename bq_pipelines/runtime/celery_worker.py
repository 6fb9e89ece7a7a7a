"""Entry point of the Celery workers:
`celery -A bq_pipelines.runtime.celery_worker worker -Q dagster`.

The app is built on first access (`app`), from the same settings as the code location's executor
(`BQ_CELERY_BROKER_URL`, `BQ_CELERY_BACKEND_URL`, `BQ_CELERY_VISIBILITY_TIMEOUT`), so importing
this module reads nothing. A worker also needs the code location's settings (`BQ_*`, the AWS and
STAC API secrets) and the Dagster instance's (`DAGSTER_PG_*`): it runs the steps.
"""

from __future__ import annotations

import os
from functools import cache

from celery import Celery

from bq_pipelines.runtime.executors import worker_app


@cache
def _app() -> Celery:
    return worker_app(os.environ)


def __getattr__(name: str) -> Celery:
    # Celery's `-A module` looks up `module.app`: build it then, not at import.
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
