"""The command line: partition keys checked and listed, counts per run, skip on a second run,
runs attributed to the dataset's job in the UI, nothing published when nothing succeeded."""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from bq_pipelines.cli import main
from bq_pipelines.cli.common import closest_keys
from bq_pipelines.datasets.demo import DEMO_LAYERS
from bq_pipelines.runtime.launch import (
    CODE_LOCATION,
    DEFINITIONS_MODULE,
    REPOSITORY,
    immediate_launch_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPE_PAGE = 4096
RUN_LINE = re.compile(
    r"^run (?P<run>[0-9a-f]{8}) \[(?P<label>[^\]]+)\]: (?P<status>ok|FAILED)"
    r"(, (?P<published>\d+) published, (?P<skipped>\d+) skipped, (?P<failed>\d+) failed)?",
    re.MULTILINE,
)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Embedded defaults under tmp, no DAGSTER_HOME (the instance under BQ_HOME); returns
    BQ_HOME."""
    for name in list(os.environ):
        if name.startswith("BQ_"):
            monkeypatch.delenv(name)
    # Set, then removed: monkeypatch then also removes what the CLI sets (its default home).
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    return tmp_path / "bq"


# ------------------------------------------------------------------------ a closed pipe


@pytest.mark.parametrize(
    ("command", "after_lines"),
    [
        # 4,920 keys (~64 kB, 16 times the test's pipe): the reader goes away while they are
        # written.
        (["partitions", "chelsa-monthly"], 1),
        (["partitions", "chelsa-monthly"], 0),
        # Short listings meet the closed pipe when they are written (the reader went first).
        (["datasets"], 0),
        (["backups"], 0),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else f"after {value} lines",
)
@pytest.mark.slow
def test_a_listing_whose_reader_goes_away_ends_quietly(
    cli_env: Path, command: list[str], after_lines: int
) -> None:
    # `bq-pipelines partitions chelsa-monthly | head -1`: the reader closes the pipe early. The
    # pipe holds one page, not Linux's default 64 kB, which a whole listing could fit in: the
    # command would then end before it met the closed pipe.
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_PAGE)
    process = subprocess.Popen(
        [str(BIN / "bq-pipelines"), *command],
        stdout=write_end,
        stderr=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    os.close(write_end)
    assert process.stderr is not None
    with open(read_end, "rb", buffering=0) as reader:  # unbuffered: a line, not a block
        for _ in range(after_lines):
            assert reader.readline()
    errors = process.stderr.read().decode()
    status = process.wait(timeout=120)

    assert status == 141, errors  # 128 + SIGPIPE, as `cat` would
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors
    assert "Exception ignored" not in errors, errors


# ------------------------------------------------------------------------ partition keys


def test_swapped_dimensions_are_suggested_first() -> None:
    valid = [
        f"{month}|{variable}" for month in ("1985-06", "1985-07") for variable in ("pet", "pr")
    ]
    assert closest_keys("pet|1985-07", valid)[0] == "1985-07|pet"
    assert closest_keys("1985-07|pre", valid)[0] == "1985-07|pr"


def test_unknown_partition_is_an_error_listing_the_closest_keys(cli_env: Path, capsys) -> None:
    assert main(["materialize", "demo", "--partition", "landcovr"]) == 2
    error = capsys.readouterr().err
    assert "dataset 'demo': unknown partition key(s)" in error
    assert "'landcovr': closest valid keys: landcover" in error
    assert "bq-pipelines partitions demo" in error
    assert not (cli_env / "catalog").exists()  # nothing ran


def test_swapped_dimensions_of_a_monthly_dataset_are_an_error(cli_env: Path, capsys) -> None:
    assert main(["materialize", "chelsa-monthly", "--partition", "pet|1985-07"]) == 2
    error = capsys.readouterr().err
    assert "'pet|1985-07': closest valid keys: 1985-07|pet" in error


def test_unknown_dataset_suggests_a_declared_one(cli_env: Path, capsys) -> None:
    assert main(["partitions", "chelsa-monthy"]) == 2
    assert "closest: chelsa-monthly" in capsys.readouterr().err


def test_partitions_lists_keys(cli_env: Path, capsys) -> None:
    assert main(["partitions", "demo"]) == 0
    assert capsys.readouterr().out.split() == list(DEMO_LAYERS)
    assert main(["partitions", "chelsa-monthly"]) == 0
    keys = capsys.readouterr().out.split()
    assert len(keys) == 492 * 10 and "1985-07|pet" in keys


def test_partitions_discovers_file_partitions_first(cli_env: Path, capsys) -> None:
    folder = cli_env / "sources" / "stressors_qc"
    folder.mkdir(parents=True)
    for name in ("roads.tif", "mines.tif"):
        (folder / name).write_bytes(b"")
    assert main(["partitions", "stressors_qc"]) == 0
    assert capsys.readouterr().out.split() == ["mines.tif", "roads.tif"]


# ------------------------------------------------------------------------ runs and counts


@pytest.mark.slow
def test_no_successful_partition_publishes_no_collection(cli_env: Path, capsys) -> None:
    # No `demo-data`: every source is missing.
    assert main(["materialize", "demo"]) == 1
    captured = capsys.readouterr()
    [run] = list(RUN_LINE.finditer(captured.out))
    assert run["label"] == "landcover .. temperature + collection" and run["status"] == "FAILED"
    assert (run["published"], run["skipped"], run["failed"]) == ("0", "0", "3")
    assert "total: 3 partitions, 0 published, 0 skipped, 3 failed" in captured.out
    assert "collection demo: not published (no partition succeeded)" in captured.out
    assert "3 of 3 partitions failed" in captured.err
    assert not (cli_env / "catalog" / "demo").exists()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "bq-pipelines"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def graphql(
    query: str, variables: dict[str, Any], env: dict[str, str], output: Path
) -> dict[str, Any]:
    """A query answered as the UI's webserver would, on the project's workspace."""
    command = [str(BIN / "dagster-graphql"), "-w", "workspace.yaml", "-t", query]
    result = subprocess.run(
        [*command, "-v", json.dumps(variables), "-o", str(output)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(output.read_text())["data"]
    return data


JOB_RUNS = """query JobRuns($params: PipelineSelector!) {
  pipelineOrError(params: $params) {
    __typename
    ... on Pipeline { runs { runId status repositoryOrigin { repositoryLocationName } } }
  }
}"""


def test_cli_launches_at_once_on_the_same_storage(tmp_path: Path) -> None:
    project = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    launch = immediate_launch_config(project, tmp_path)
    # The project's run queue needs the daemon; pools and the rest are kept.
    assert launch["run_coordinator"]["class"] == "DefaultRunCoordinator"
    assert "runs" not in launch["concurrency"] and launch["concurrency"]["pools"]
    assert project["concurrency"]["runs"]  # the project's own configuration is left alone
    assert launch["storage"] == {"sqlite": {"base_dir": str(tmp_path)}}
    assert launch["compute_logs"]["config"] == {"base_dir": str(tmp_path / "storage")}
    assert launch["telemetry"] == project["telemetry"]
    # A deployment's own storage and launcher are used as they are.
    postgres = {"postgres_url": {"env": "DAGSTER_PG_URL"}}
    deployed = {
        "storage": {"postgres": postgres},
        "run_launcher": {"module": "dagster_celery", "class": "CeleryRunLauncher"},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
        },
    }
    launch = immediate_launch_config(deployed, tmp_path)
    assert launch["storage"] == {"postgres": postgres}
    assert launch["run_launcher"] == deployed["run_launcher"]
    assert launch["run_coordinator"]["class"] == "DefaultRunCoordinator"


def test_the_code_location_the_cli_launches_is_the_workspace_one() -> None:
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"] == [
        {"python_module": {"module_name": DEFINITIONS_MODULE, "location_name": CODE_LOCATION}}
    ]


@pytest.mark.slow
def test_cli_runs_are_the_jobs_runs_counted_then_skipped(tmp_path: Path) -> None:
    # No DAGSTER_HOME: the CLI keeps its runs in $BQ_HOME/dagster, as `make` does, so that a
    # second run from any shell skips what the first published.
    bq_home = tmp_path / "bq"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BQ_")}
    env.pop("DAGSTER_HOME", None)
    env |= {"BQ_HOME": str(bq_home)}

    generated = run_cli("demo-data", env=env)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.count("(written)") == 3
    first = run_cli("materialize", "demo", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"runs are recorded in {bq_home / 'dagster'}" in first.stderr
    [run] = list(RUN_LINE.finditer(first.stdout))
    assert run["label"] == "landcover .. temperature + collection" and run["status"] == "ok"
    assert (run["published"], run["skipped"], run["failed"]) == ("3", "0", "0")
    assert "total: 3 partitions, 3 published, 0 skipped, 0 failed" in first.stdout
    assert (bq_home / "dagster" / "dagster.yaml").read_text() == (
        PROJECT_ROOT / "dagster.yaml"
    ).read_text()

    # What `make demo` does again: the rasters are left alone, every partition is skipped.
    sources = sorted((bq_home / "sources" / "demo").glob("*.tif"))
    before = [(p.stat().st_mtime_ns, p.read_bytes()) for p in sources]
    regenerated = run_cli("demo-data", env=env)
    assert regenerated.stdout.count("(unchanged)") == 3, regenerated.stdout
    assert [(p.stat().st_mtime_ns, p.read_bytes()) for p in sources] == before
    second = run_cli("materialize", "demo", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    [again] = list(RUN_LINE.finditer(second.stdout))
    assert (again["published"], again["skipped"], again["failed"]) == ("0", "3", "0")
    assert "total: 3 partitions, 0 published, 3 skipped, 0 failed" in second.stdout
    # Through the code location, as the UI launches runs: the same instance, skipped too.
    launched = run_cli("materialize", "demo", "--launch", env=env)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    [third] = list(RUN_LINE.finditer(launched.stdout))
    assert (third["published"], third["skipped"], third["failed"]) == ("0", "3", "0")

    # The UI's job page lists the three runs: no "No runs found"; the launched one carries the
    # code location's origin ("Re-execute" finds the job where the run came from).
    env["DAGSTER_HOME"] = str(bq_home / "dagster")
    selector = {
        "repositoryLocationName": CODE_LOCATION,
        "repositoryName": REPOSITORY,
        "pipelineName": "demo_job",
    }
    job = graphql(JOB_RUNS, {"params": selector}, env, tmp_path / "graphql.json")
    job = job["pipelineOrError"]
    assert job["__typename"] == "Pipeline"
    listed = {r["runId"][:8]: r for r in job["runs"]}
    assert set(listed) == {run["run"], again["run"], third["run"]}
    assert {r["status"] for r in listed.values()} == {"SUCCESS"}
    assert listed[third["run"]]["repositoryOrigin"] == {"repositoryLocationName": CODE_LOCATION}

    # Published files are readable by anyone (a web server serving the catalog, say).
    published = [*(bq_home / "objects").rglob("*.tif"), *(bq_home / "catalog").rglob("*.json")]
    assert len(published) == 3 + 1 + 1 + 3
    for path in published:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    with dg.DagsterInstance.from_config(str(bq_home / "dagster")) as instance:
        runs = instance.get_runs()
    assert {r.run_id[:8] for r in runs} == set(listed)
    assert all(r.job_name == "demo_job" for r in runs)


@pytest.mark.slow
def test_after_a_failed_run_the_cli_says_what_the_catalog_still_holds(
    cli_env: Path, capsys
) -> None:
    assert main(["demo-data"]) == 0
    assert main(["materialize", "demo"]) == 0
    for layer in DEMO_LAYERS:
        (cli_env / "sources" / "demo" / f"{layer}.tif").write_bytes(b"not a raster any more")
    capsys.readouterr()
    assert main(["materialize", "demo", "--force"]) == 1
    out = capsys.readouterr().out
    assert "collection demo: not published (no partition succeeded)" in out
    assert "collection demo: 3 items" not in out  # no line contradicting that one
    assert "the catalog still holds 3 items in" in out and "from earlier runs" in out


# ------------------------------------------------------------------------ secrets


def test_materialize_on_a_stac_api_with_a_token_and_credentials_in_its_url(
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    services_env: dict[str, str],
    s3_bucket: str,
    stac_api_url: str,
) -> None:
    # stac-fastapi ignores both the bearer token and basic auth: what matters here is that the
    # command resolves its secrets as a run does, and never shows them.
    password, token = "pa55-in-url", "t0ken-in-env"
    for name, value in services_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BQ_HOME", str(cli_env))
    monkeypatch.setenv("BQ_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("BQ_PUBLIC_BASE_URL", f"{services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}")
    monkeypatch.setenv("BQ_STAC_API_URL", stac_api_url.replace("://", f"://bq:{password}@"))
    monkeypatch.setenv("BQ_STAC_API_TOKEN", token)

    assert main(["demo-data"]) == 0
    assert main(["materialize", "demo"]) == 0

    out, err = capfd.readouterr()
    assert "total: 3 partitions, 3 published, 0 skipped, 0 failed" in out
    assert f"collection demo: 3 items in {stac_api_url}\n" in out
    for layer in DEMO_LAYERS:
        assert f"  demo_{layer}: {services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}/io/demo/" in out
    assert password not in out + err and token not in out + err
