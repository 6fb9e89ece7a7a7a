"""Runs of a dataset's job started outside the UI (the CLI, tests, benchmarks), and what each did.

A dataset is materialized in batches of partitions, one run per batch, the collection in the last
run (or in a run of its own when the last batch failed but others published items). Two ways to
start a run:
- `InProcessLauncher` (the CLI, tests, benchmarks): `execute_in_process` of any Definitions, in
  seconds. With `code_location_tags()` (the CLI), the UI lists the run under the dataset's job
  of the code location; it cannot re-execute it (the run has no code location origin).
- `CodeLocationLauncher` (`bq-pipelines materialize --launch`): `dagster job launch` against the
  code location, as the UI launches runs. The run carries the code location's origin, so the UI
  re-executes it without a warning; a code server and a run process start for it.
What a run did is read back from its events in the instance, whichever way it was started.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import yaml

from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.orchestration.keys import DatasetKeys, op_name
from bq_pipelines.runtime.event_batching import batched_event_writes, with_event_batching
from bq_pipelines.runtime.monitoring import fail_if_worker_gone

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# The code location as workspace.yaml declares it: the UI attributes runs by these names.
DEFINITIONS_MODULE = "bq_pipelines.definitions"
CODE_LOCATION = "bq_pipelines"
REPOSITORY = "__repository__"  # the repository name Dagster gives a Definitions object
REPOSITORY_TAG = ".dagster/repository"
LAUNCH_TIMEOUT_SECONDS = 300.0
START_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 0.5
WORKER_CHECK_SECONDS = 5.0


class LaunchError(PipelineError):
    """A run could not be launched, or never started."""


# ---------------------------------------------------------------------------- batches


def partition_batches(
    partitions_def: dg.PartitionsDefinition,
    keys: Sequence[str],
    batch_size: int,
    instance: dg.DagsterInstance | None = None,
) -> list[list[str]]:
    """Split `keys` into batches of at most `batch_size` contiguous partitions, one run each.

    A run targets a range of partitions; for multi-partitions a range is a box, so batches run
    along the time dimension for one value of the static dimension.
    """
    all_keys = list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
    wanted = set(keys)
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        lines: dict[str, list[str]] = {}
        time_dim = next(
            d
            for d in partitions_def.partitions_defs
            if isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)
        )
        # Adjacent along the time dimension, not in the list of every key (the other
        # dimensions' values sit between two time keys of one line there).
        time_index = {key: i for i, key in enumerate(time_dim.partitions_def.get_partition_keys())}
        line_index: dict[str, int] = {}
        for key in all_keys:
            if key in wanted:
                parts = partitions_def.get_partition_key_from_str(key).keys_by_dimension
                other = {k: v for k, v in parts.items() if k != time_dim.name}
                lines.setdefault(json.dumps(other, sort_keys=True), []).append(key)
                line_index[key] = time_index[parts[time_dim.name]]
        return [
            batch
            for line in lines.values()
            for batch in _contiguous_chunks(line, line_index, batch_size)
        ]
    position = {key: index for index, key in enumerate(all_keys)}
    return _contiguous_chunks([k for k in all_keys if k in wanted], position, batch_size)


def _contiguous_chunks(
    keys: list[str], index: Mapping[str, int], batch_size: int
) -> list[list[str]]:
    """`keys` in chunks of at most `batch_size`, each a run of consecutive `index` values."""
    chunks: list[list[str]] = []
    chunk: list[str] = []
    for key in keys:
        if chunk and (len(chunk) == batch_size or index[key] - index[chunk[-1]] != 1):
            chunks.append(chunk)
            chunk = []
        chunk.append(key)
    if chunk:
        chunks.append(chunk)
    return chunks


# --------------------------------------------------------------------------- launchers


class Launcher(Protocol):
    def run(self, job_name: str, assets: Sequence[dg.AssetKey], tags: Mapping[str, str]) -> str:
        """Run `assets` of the job with `tags`; return the run id once the run has finished."""
        ...


@dataclass
class InProcessLauncher:
    """Runs executed in this process, on any Definitions; `tags` are added to every run."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    tags: Mapping[str, str] = field(default_factory=dict)

    def run(self, job_name: str, assets: Sequence[dg.AssetKey], tags: Mapping[str, str]) -> str:
        with batched_event_writes():
            result = job_subset(self.defs.resolve_job_def(job_name), assets).execute_in_process(
                instance=self.instance,
                raise_on_error=False,
                run_config=QUIET_LOGS,
                tags={**self.tags, **tags},
            )
        return result.run_id


def code_location_tags() -> dict[str, str]:
    """What makes the UI list an in-process run under its job of the code location: the job
    page selects runs by job name and this tag (`<repository>@<location>`), which a launch
    through the code location sets from the run's origin."""
    return {REPOSITORY_TAG: f"{REPOSITORY}@{CODE_LOCATION}"}


def job_subset(job: dg.JobDefinition, assets: Sequence[dg.AssetKey]) -> dg.JobDefinition:
    """`job` cut to `assets` and the job's own checks of them.

    `execute_in_process(asset_selection=...)` would add every check of the selected assets in the
    Definitions, the collection's on-request drift audit among them (an item read and an object
    HEAD per item of the dataset), which the job leaves out; `dagster job launch -o` (the op
    selection CodeLocationLauncher uses) does not.
    """
    selected = set(assets)
    checks = {
        key for key in job.asset_layer.asset_graph.asset_check_keys if key.asset_key in selected
    }
    return job.get_subset(asset_selection=selected, asset_check_selection=checks)


def immediate_launch_config(config: Mapping[str, Any], dagster_home: Path) -> dict[str, Any]:
    """The instance configuration `config` (of `dagster_home`) with runs launched at once.

    The run queue is the daemon's: a CLI run would wait in it forever without one (`make demo`
    starts none). The CLI launches one run at a time, so going around the queue adds at most one
    run to what it allows. Same storage (defaults spelled out, they would otherwise follow
    DAGSTER_HOME), same run launcher.
    """
    launch = copy.deepcopy(dict(config))
    for key in ("run_coordinator", "run_queue"):
        launch.pop(key, None)
    concurrency = launch.get("concurrency")
    if isinstance(concurrency, dict):
        concurrency.pop("runs", None)
    launch["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    if not {"storage", "run_storage", "event_log_storage", "schedule_storage"} & launch.keys():
        launch["storage"] = {"sqlite": {"base_dir": str(dagster_home)}}
    launch.setdefault(
        "local_artifact_storage",
        {
            "module": "dagster.core.storage.root",
            "class": "LocalArtifactStorage",
            "config": {"base_dir": str(dagster_home)},
        },
    )
    launch.setdefault(
        "compute_logs",
        {
            "module": "dagster.core.storage.local_compute_log_manager",
            "class": "LocalComputeLogManager",
            "config": {"base_dir": str(dagster_home / "storage")},
        },
    )
    return launch


@dataclass
class CodeLocationLauncher:
    """Runs launched with `dagster job launch` against the code location, as the UI does.

    `launch_home` holds a workspace file and the instance configuration of DAGSTER_HOME with
    runs launched at once (see immediate_launch_config). The run executes in a process of its
    own; this waits for it to finish. A run process killed mid-run (out of memory, say) is
    noticed while waiting: the run is marked failed (monitoring.py) and the wait ends.
    """

    defs: dg.Definitions
    instance: dg.DagsterInstance
    launch_home: Path
    _workspace: Path = field(init=False)

    def __post_init__(self) -> None:
        dagster_home = Path(os.environ["DAGSTER_HOME"]).absolute()
        config_path = dagster_home / "dagster.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
        self.launch_home.mkdir(parents=True, exist_ok=True)
        (self.launch_home / "dagster.yaml").write_text(
            yaml.safe_dump(immediate_launch_config(config or {}, dagster_home))
        )
        self._workspace = self.launch_home / "workspace.yaml"
        workspace = {
            "load_from": [
                {
                    "python_module": {
                        "module_name": DEFINITIONS_MODULE,
                        "location_name": CODE_LOCATION,
                    }
                }
            ]
        }
        self._workspace.write_text(yaml.safe_dump(workspace))

    def run(self, job_name: str, assets: Sequence[dg.AssetKey], tags: Mapping[str, str]) -> str:
        run_id = str(uuid.uuid4())
        # `dagster job launch` selects ops: a multi-asset is one op for all its assets.
        ops = sorted({self.defs.resolve_assets_def(key).op.name for key in assets})
        command = [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "launch",
            "-w",
            str(self._workspace),
            "-j",
            job_name,
            "-o",
            ",".join(ops),
            "--run-id",
            run_id,
            "--tags",
            json.dumps(dict(tags)),
        ]
        env = with_event_batching({**os.environ, "DAGSTER_HOME": str(self.launch_home)})
        try:
            launched = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired as error:
            raise LaunchError(
                f"{job_name}: `dagster job launch` took over {error.timeout} s"
            ) from error
        if launched.returncode != 0:
            tail = "\n".join(launched.stderr.strip().splitlines()[-15:])
            raise LaunchError(f"{job_name}: `dagster job launch` failed:\n{tail}")
        self._wait(run_id)
        return run_id

    def _wait(self, run_id: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        next_worker_check = 0.0
        while True:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return
            # Once started, a run takes as long as its partitions do; before that, a launch that
            # never starts (a run worker that died on import) must not hang the CLI.
            started = run is not None and run.status == dg.DagsterRunStatus.STARTED
            if started and time.monotonic() > next_worker_check:
                next_worker_check = time.monotonic() + WORKER_CHECK_SECONDS
                if fail_if_worker_gone(self.instance, run_id):
                    continue  # now FAILURE: the next read ends the wait
            if not started and time.monotonic() > deadline:
                status = run.status.value if run is not None else "not created"
                raise LaunchError(
                    f"run {run_id} did not start within {START_TIMEOUT_SECONDS:.0f} s ({status})"
                )
            time.sleep(POLL_SECONDS)


@contextmanager
def code_location_launcher(
    defs: dg.Definitions, instance: dg.DagsterInstance
) -> Iterator[CodeLocationLauncher]:
    with tempfile.TemporaryDirectory(prefix="bq-launch-") as launch_home:
        yield CodeLocationLauncher(defs, instance, Path(launch_home))


# ------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class RunReport:
    """What one run did: partitions published, skipped (unchanged) and failed, and whether it
    built the collection (None: the run did not target it)."""

    run_id: str
    partitions: tuple[str, ...]
    success: bool
    published: int
    skipped: int
    collection_published: bool | None
    failures: tuple[str, ...]

    @property
    def failed(self) -> int:
        return len(self.partitions) - self.published - self.skipped


def _materialized_key(record: Any) -> dg.AssetKey | None:
    materialization = record.event_log_entry.asset_materialization
    return materialization.asset_key if materialization is not None else None


def _was_skipped(record: Any) -> bool:
    entry = record.event_log_entry.asset_materialization.metadata.get("skipped")
    return entry is not None and entry.value is True


def _failure_text(record: Any) -> str:
    event = record.event_log_entry.dagster_event
    data = event.step_failure_data if event is not None else None
    if data is None:
        return "step failed"
    if data.user_failure_data is not None and data.user_failure_data.description:
        return str(data.user_failure_data.description).strip()  # our dg.Failure: per partition
    return str(data.error.message).strip() if data.error else "step failed"


def run_report(
    instance: dg.DagsterInstance,
    run_id: str,
    keys: DatasetKeys,
    partitions: Sequence[str],
    with_collection: bool,
) -> RunReport:
    """A finished run's outcome, from its events: the stac_item materialization of each
    partition says whether it was skipped; step failures say why the others failed."""
    run = instance.get_run_by_id(run_id)
    materialized = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    items = [r for r in materialized if _materialized_key(r) == keys.step("stac_item")]
    skipped = sum(1 for r in items if _was_skipped(r))
    built = any(_materialized_key(r) == keys.collection for r in materialized)
    failures = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.STEP_FAILURE
    ).records
    return RunReport(
        run_id=run_id,
        partitions=tuple(partitions),
        success=run is not None and run.status == dg.DagsterRunStatus.SUCCESS,
        published=len(items) - skipped,
        skipped=skipped,
        collection_published=built if with_collection else None,
        failures=tuple(_failure_text(r) for r in failures),
    )


# -------------------------------------------------------------------------- materialize


@dataclass
class Materialization:
    """Every run of one `materialize` call."""

    dataset_id: str
    runs: list[RunReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(run.success for run in self.runs)

    @property
    def published(self) -> int:
        return sum(run.published for run in self.runs)

    @property
    def skipped(self) -> int:
        return sum(run.skipped for run in self.runs)

    @property
    def failed(self) -> int:
        return sum(run.failed for run in self.runs)

    @property
    def collection_published(self) -> bool:
        return any(run.collection_published for run in self.runs)


def materialize(
    declaration: Declaration,
    defs: dg.Definitions,
    partition_keys: Sequence[str],
    instance: dg.DagsterInstance,
    launcher: Launcher | None = None,
    on_run: Callable[[RunReport], None] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Materialization:
    """Run the dataset's job over `partition_keys` in batches, the collection in the last run.

    A failed batch keeps Dagster from building the collection after it; the collection then
    gets a run of its own if any partition succeeded (published, or skipped as unchanged).
    With no successful partition no collection is published. `on_run` gets each RunReport as
    soon as its run has finished. `tags` are added to every run (e.g. `bq/force`).
    """
    launcher = launcher or InProcessLauncher(defs, instance)
    job_name = op_name(declaration.id, "job")
    keys = DatasetKeys(declaration.id)
    partitions_def = defs.resolve_job_def(job_name).partitions_def
    assert partitions_def is not None
    batches = partition_batches(
        partitions_def, partition_keys, declaration.partitions.batch_size, instance
    )
    done = Materialization(declaration.id)

    def record(run_id: str, partitions: Sequence[str], with_collection: bool) -> None:
        report = run_report(instance, run_id, keys, partitions, with_collection)
        done.runs.append(report)
        if on_run is not None:
            on_run(report)

    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        assets = [*keys.partitioned, keys.collection] if last else keys.partitioned
        batch_tags = {**(tags or {}), RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1]}
        record(launcher.run(job_name, assets, batch_tags), batch, with_collection=last)
    if not done.collection_published and done.published + done.skipped > 0:
        record(
            launcher.run(job_name, [keys.collection], dict(tags or {})), [], with_collection=True
        )
    return done
