"""The executor of the code location's runs (runtime/executors.py): a plan whose steps can only
run one after the other (a dataset run: its batch step, then the collection's) runs in the run
worker, without a step process to start (one load of the code location less per run); a plan with
steps that can run at once gets Dagster's step processes, several at a time.

Real runs through `execute_job` on a temporary instance: this test's process is the run worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bq_pipelines.runtime.executors import executor_for, multi_or_in_process_chains_in_worker
from bq_pipelines.settings import Settings


@dg.op
def first() -> int:
    return os.getpid()


@dg.op
def then(previous: int) -> int:
    del previous  # only the order matters
    return os.getpid()


@dg.op
def beside() -> int:
    return os.getpid()


@dg.job(executor_def=multi_or_in_process_chains_in_worker)
def one_step() -> None:
    first()


@dg.job(executor_def=multi_or_in_process_chains_in_worker)
def chain() -> None:
    then(then(first()))


@dg.job(executor_def=multi_or_in_process_chains_in_worker)
def side_by_side() -> None:
    first()
    beside()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def step_pids(
    job: dg.JobDefinition, instance: dg.DagsterInstance, run_config: dict[str, Any] | None = None
) -> list[int]:
    """The pid each of the job's steps ran in."""
    with dg.execute_job(
        dg.reconstructable(job), instance=instance, run_config=run_config or {}
    ) as result:
        assert result.success
        return [result.output_for_node(node.name) for node in job.graph.nodes]


def test_a_plan_of_one_step_runs_in_the_run_worker(instance: dg.DagsterInstance):
    assert step_pids(one_step, instance) == [os.getpid()]


def test_a_chain_of_steps_runs_in_the_run_worker(instance: dg.DagsterInstance):
    assert step_pids(chain, instance) == [os.getpid()] * 3


def test_steps_that_can_run_at_once_get_step_processes(instance: dg.DagsterInstance):
    pids = step_pids(side_by_side, instance)
    assert os.getpid() not in pids
    assert len(set(pids)) == 2


def test_the_executor_takes_dagsters_default_executor_config(instance: dg.DagsterInstance):
    """Run configs written for Dagster's default executor keep working: `in_process` runs every
    plan in the worker; `multiprocess` fields are accepted as they are (a chain still runs in
    the worker)."""
    in_process: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}
    assert step_pids(side_by_side, instance, in_process) == [os.getpid()] * 2
    one_at_a_time = {"max_concurrent": 1, "retries": {"disabled": {}}}
    multiprocess = {"execution": {"config": {"multiprocess": one_at_a_time}}}
    assert step_pids(chain, instance, multiprocess) == [os.getpid()] * 3


def test_the_code_location_uses_it_unless_celery_is_chosen():
    assert executor_for(Settings.from_env({})) is multi_or_in_process_chains_in_worker
