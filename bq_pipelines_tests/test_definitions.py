"""The whole code location loads and lists what users see in the Dagster UI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bq_pipelines import definitions as definitions_module
from bq_pipelines import settings
from bq_pipelines.backup.assets import (
    BACKUP_ASSET,
    BACKUP_GROUP,
    BACKUP_JOB,
    BACKUP_SCHEDULE,
    RESTORABLE_CHECK,
)
from bq_pipelines.datasets import loading
from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.definitions import defs
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.keys import (
    COG_VALID_CHECK,
    DATASET_TAG,
    ITEM_VALID_CHECK,
    PARTITION_STEPS,
    op_name,
)
from bq_pipelines_testkit.values import resources_of


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    loaded = defs()
    loaded.validate_loadable(loaded)
    return loaded


def test_every_dataset_has_its_assets_checks_and_job(definitions: dg.Definitions):
    asset_keys = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    check_keys = {
        (key.asset_key.to_user_string(), key.name)
        for key in definitions.resolve_asset_graph().asset_check_keys
    }
    jobs = {job.name: job for job in definitions.resolve_all_job_defs()}
    for declaration in load_declarations():
        for step in (*PARTITION_STEPS, "collection"):
            assert f"{declaration.id}/{step}" in asset_keys
        assert (f"{declaration.id}/cog", COG_VALID_CHECK) in check_keys
        assert (f"{declaration.id}/stac_item", ITEM_VALID_CHECK) in check_keys
        # The run queue's per-dataset limit (deploy/dagster.yaml) counts runs by this tag.
        assert jobs[op_name(declaration.id, "job")].tags[DATASET_TAG] == declaration.id


def test_demo_is_partitioned_by_layer_with_a_batched_backfill_policy(definitions):
    assets_def = definitions.resolve_assets_def(dg.AssetKey(["demo", "stac_item"]))
    assert assets_def.partitions_def.get_partition_keys() == [
        "landcover",
        "elevation",
        "temperature",
    ]
    assert assets_def.backfill_policy == dg.BackfillPolicy.multi_run(3)
    checks = {spec.name: spec.blocking for spec in assets_def.check_specs}
    assert checks == {COG_VALID_CHECK: True, ITEM_VALID_CHECK: True}


def test_sensors_are_listed_with_their_default_status(definitions):
    sensors = {sensor.name: sensor.default_status for sensor in definitions.sensors}
    stopped, running = dg.DefaultSensorStatus.STOPPED, dg.DefaultSensorStatus.RUNNING
    assert sensors["chelsa_monthly_upstream_sensor"] == stopped  # off by default
    assert sensors["gfw_lossyear_upstream_sensor"] == stopped
    assert sensors["stressors_qc_files_sensor"] == running  # only adds partitions
    assert sensors["collections_automation_sensor"] == running
    assert "demo_upstream_sensor" not in sensors  # local sources do not grow by themselves


def test_schedules_and_sensors_are_listed(definitions):
    # Every schedule and sensor resolves (none may point at a missing job).
    for schedule in definitions.schedules or []:
        assert definitions.resolve_schedule_def(schedule.name)
    for sensor in definitions.sensors or []:
        assert definitions.resolve_sensor_def(sensor.name)


def test_resources_follow_the_settings(monkeypatch):
    monkeypatch.setenv("BQ_OBJECT_STORE", "s3")
    monkeypatch.setenv("BQ_S3_BUCKET", "bq-io")
    monkeypatch.setenv("BQ_CATALOG", "stac-api")
    monkeypatch.setenv("BQ_STAC_API_URL", "http://127.0.0.1:8082")
    resources = resources_of(defs())
    assert type(resources["object_store"]).__name__ == "S3ObjectStoreResource"
    assert type(resources["catalog"]).__name__ == "StacApiCatalogResource"


@pytest.mark.slow
def test_partition_locks_follow_the_settings(monkeypatch):
    # Embedded defaults: file locks under the work dir; with the catalog's database (what
    # production sets), advisory locks every machine shares, the DSN read through EnvVar.
    monkeypatch.delenv("BQ_PGSTAC_DSN", raising=False)
    monkeypatch.setenv("BQ_WORK_DIR", "/srv/bq/work")
    locks = resources_of(defs())["locks"]
    assert type(locks).__name__ == "FileLocksResource"
    assert locks.root == "/srv/bq/work/.locks"
    monkeypatch.setenv("BQ_PGSTAC_DSN", "postgresql://postgres@127.0.0.1:5432/bq_catalog")
    locks = resources_of(defs())["locks"]
    assert type(locks).__name__ == "PostgresLocksResource"
    assert isinstance(locks.dsn, dg.EnvVar) and locks.dsn.env_var_name == "BQ_PGSTAC_DSN"


def test_every_dataset_has_the_drift_audit_outside_its_job(definitions):
    job = definitions.resolve_job_def("demo_job")
    in_job = {key.name for key in job.asset_layer.asset_graph.asset_check_keys}
    assert in_job == {"cog_valid", "stac_item_valid"}  # the audit runs on request
    for dataset in ("demo", "chelsa-monthly", "global-mammals"):
        key = dg.AssetCheckKey(dg.AssetKey([dataset, "collection"]), "catalog_matches_store")
        assert definitions.resolve_assets_def(dg.AssetKey([dataset, "collection"]))
        assert key in definitions.resolve_asset_graph().asset_check_keys
    sensors = {sensor.name: sensor.default_status for sensor in definitions.sensors}
    assert sensors["dead_run_workers"] == dg.DefaultSensorStatus.RUNNING


def test_a_bad_setting_fails_the_load_naming_the_variable(monkeypatch):
    monkeypatch.setenv("BQ_CATALOG", "ftp")
    with pytest.raises(ConfigError, match="BQ_CATALOG: 'ftp' is not one of static, stac-api"):
        defs()


def test_the_load_reads_each_declaration_once_and_the_settings_once(monkeypatch):
    # A fresh load: nothing remembered from an earlier one.
    monkeypatch.setattr(loading, "_LOADED", {})
    monkeypatch.setattr(definitions_module, "_BUILT", {})
    settings._settings_of.cache_clear()
    read_files: list[Path] = []
    read_settings: list[object] = []
    read_file, from_env = loading._read_declaration_file, settings.Settings.from_env

    def counted_file(path: Path) -> Declaration:
        read_files.append(path)
        return read_file(path)

    def counted_settings(env):
        read_settings.append(env)
        return from_env(env)

    monkeypatch.setattr(loading, "_read_declaration_file", counted_file)
    monkeypatch.setattr(settings.Settings, "from_env", counted_settings)
    defs()
    # Each defs.yaml was parsed by its component only; the checks across datasets reused them.
    assert read_files == []
    # One reading of the environment for every dataset, the backup and the resources.
    assert len(read_settings) == 1


def test_the_load_imports_no_executor_or_reader_it_does_not_use():
    """Every code server, run worker and step process loads the code location: Celery (with
    kombu and Dagster's CLI) only when it is the executor, netCDF4 only when a cube is read."""
    script = (
        "import sys, bq_pipelines.definitions as d; d.defs(); "
        "print(sorted(m for m in ('celery', 'kombu', 'dagster_celery', 'netCDF4') "
        "if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BQ_")}
    loaded = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_the_freshness_daemon_is_off_while_no_asset_declares_a_freshness_policy(
    definitions: dg.Definitions, tmp_path: Path
):
    """dagster.yaml turns the freshness daemon off (it read every asset's state every 30 s for
    nothing): the first asset with a freshness policy must turn it back on, or its policy is
    never evaluated. deploy/test_instance.py checks the production instance the same way."""
    graph = definitions.resolve_asset_graph()
    with_policy = [
        key.to_user_string()
        for key in graph.get_all_asset_keys()
        if graph.get(key).freshness_policy_or_from_metadata is not None
    ]
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))  # as `make dev` reads it
    try:
        freshness_daemon = "FRESHNESS_DAEMON" in instance.get_required_daemon_types()
    finally:
        instance.dispose()
    assert freshness_daemon == bool(with_policy), with_policy


# Dagster's CLI, counting the code location's builds (printed as it exits).
DAGSTER_COUNTING_BUILDS = """
import atexit, runpy, sys
import bq_pipelines.definitions as definitions
builds = []
build = definitions._build
definitions._build = lambda: builds.append(1) or build()
atexit.register(lambda: print(f"code location built {len(builds)} time(s)"))
sys.argv[0] = "dagster"
runpy.run_module("dagster", run_name="__main__")
"""


@pytest.mark.slow
def test_workspace_yaml_loads_the_code_location_built_once(tmp_path):
    # What `make dev` and a deployment load: the workspace file, through Dagster's own CLI.
    # Dagster asks for the definitions twice as it loads a location (in a code server too):
    # the second ask reuses the first build.
    root = Path(__file__).resolve().parents[1]
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(root / "dagster.yaml", home / "dagster.yaml")
    validate = ["definitions", "validate", "-w", str(root / "workspace.yaml")]
    result = subprocess.run(
        [sys.executable, "-c", DAGSTER_COUNTING_BUILDS, *validate],
        cwd=root,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr
    assert "code location built 1 time(s)" in result.stdout, result.stdout


def test_the_definitions_are_built_again_only_when_a_setting_or_a_file_changes(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(definitions_module, "_BUILT", {})
    monkeypatch.setattr(definitions_module, "SHARED_FOLDER", tmp_path)
    shared = tmp_path / "hosts.yaml"
    shared.write_text("hosts: {}\n")
    first = defs()
    assert defs() is first
    monkeypatch.setenv("BQ_OBJECT_PREFIX", "elsewhere")
    changed_setting = defs()
    assert changed_setting is not first and defs() is changed_setting
    shared.write_text("hosts: {a: 1}\n")  # another size
    assert defs() is not changed_setting


def test_the_catalog_backup_asset_check_job_and_schedule(monkeypatch):
    monkeypatch.setenv("BQ_PGSTAC_DSN", "postgresql://postgres@127.0.0.1:5432/bq_catalog")
    definitions = defs()
    assets_def = definitions.resolve_assets_def(BACKUP_ASSET)
    spec = assets_def.specs_by_key[BACKUP_ASSET]
    assert (spec.group_name, spec.kinds) == (BACKUP_GROUP, {"postgres"})
    assert isinstance(assets_def.partitions_def, dg.DailyPartitionsDefinition)
    assert {spec.name: spec.blocking for spec in assets_def.check_specs} == {RESTORABLE_CHECK: True}
    assert definitions.resolve_job_def(BACKUP_JOB).partitions_def == assets_def.partitions_def
    schedule = definitions.resolve_schedule_def(BACKUP_SCHEDULE)
    assert (schedule.job_name, schedule.cron_schedule) == (BACKUP_JOB, "0 4 * * *")
    assert type(resources_of(definitions)["backup"]).__name__ == "PgstacBackupResource"


@pytest.mark.slow
def test_dagsters_cli_lists_the_backup_asset_and_schedule(tmp_path):
    # What the UI and the daemon see: `make dev` turns the schedule off, production leaves it on.
    root = Path(__file__).resolve().parents[1]
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(root / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "BQ_BACKUP_SCHEDULE_ENABLED": "false"}
    dagster = str(Path(sys.executable).parent / "dagster")
    listed = {}
    for what, location in (
        ("asset", ["-m", "bq_pipelines.definitions"]),  # `asset list` takes no workspace
        ("schedule", ["-w", str(root / "workspace.yaml")]),
    ):
        result = subprocess.run(
            [dagster, what, "list", *location],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        listed[what] = result.stdout
    assert "catalog_backup" in listed["asset"].split()
    assert "Schedule: catalog_backup_schedule [STOPPED]" in listed["schedule"]
