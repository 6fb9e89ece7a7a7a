"""A dataset materialized in a process of its own, for tests that kill it (`kill -9`).

`python -m bq_pipelines_tests.materialize_process <declaration.yaml> <dagster dir>`: settings
from the environment (BQ_*), runs recorded in a SQLite instance under `<dagster dir>`, exit
status 0 when every run succeeded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg
import yaml

from bq_pipelines.datasets.loading import parse_declaration
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.runs import materialize_dataset


def main(declaration_path: str, dagster_dir: str) -> int:
    path = Path(declaration_path)
    declaration = parse_declaration(yaml.safe_load(path.read_text()), path.name)
    with dg.DagsterInstance.local_temp(dagster_dir, {"telemetry": {"enabled": False}}) as instance:
        done = materialize_dataset(declaration, Settings.from_env(os.environ), instance)
    print(f"published {done.published}, skipped {done.skipped}, failed {done.failed}", flush=True)
    return 0 if done.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
