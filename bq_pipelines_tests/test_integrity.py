"""Nothing published is silently overwritten, skipped while broken, or lost to a fault; the drift
audit proves it. On the embedded defaults and on the real services (moto S3 behind a proxy the
tests take down, stac-fastapi-pgstac, PostgreSQL advisory locks)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pystac
import pytest
import yaml

from bq_pipelines.datasets.demo import DEMO_LAYERS
from bq_pipelines.datasets.plans import SourceLocations, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.integrity import checksum_sha256
from bq_pipelines.lib.locks import FileLocks, Locks, PostgresLocks, partition_lock_name
from bq_pipelines.lib.pipeline import run_items
from bq_pipelines.lib.storage import API_WRITER
from bq_pipelines.lib.waiting import wait_until
from bq_pipelines.orchestration.keys import AUDIT_CHECK, DatasetKeys
from bq_pipelines.orchestration.materialize import FORCE_TAG
from bq_pipelines.orchestration.resources import LOCKS_FOLDER, S3ObjectStoreResource, resources_for
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.runs import (
    audit_dataset,
    built_services,
    dataset_definitions,
    failure_messages,
    latest_metadata,
    materialize_dataset,
)
from bq_pipelines_testkit.services import python_path
from bq_pipelines_testkit.values import metadata_value, published_item
from bq_pipelines_tests.fixtures.demo import demo_data, demo_declaration
from bq_pipelines_tests.fixtures.services import services_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 300.0
NO_TELEMETRY = {"telemetry": {"enabled": False}}


def declaration_file(declaration_id: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({**demo_data(), "id": declaration_id, "folder": declaration_id}))
    return path


@pytest.fixture(params=["local", pytest.param("service", marks=pytest.mark.services)])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    settings = request.getfixturevalue(f"{request.param}_settings")
    assert isinstance(settings, Settings)
    return settings


def moto_port(services_env: dict[str, str]) -> int:
    return int(services_env["BQ_S3_ENDPOINT_URL"].rsplit(":", 1)[1])


def assert_no_drift(declaration: Declaration, settings: Settings, instance) -> None:
    report = audit_dataset(declaration, settings, instance)
    assert report.clean, report.listing()
    counts = report.counts()
    assert (counts["orphans"], counts["duplicates"], counts["missing_objects"]) == (0, 0, 0)
    # A COG and its thumbnail per item.
    assert counts["items"] == counts["objects"] / 2 == len(DEMO_LAYERS)


# ------------------------------------------------------------------ skip only what is there


def test_a_deleted_and_an_overwritten_object_are_put_back_on_the_next_run(
    any_settings: Settings, unique_id: str
) -> None:
    declaration = demo_declaration(f"demo-{unique_id}")
    keys = DatasetKeys(declaration.id)
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_dataset(declaration, any_settings, instance)
    assert first.ok and first.published == 3
    prefix = f"io/{declaration.id}"
    with built_services(any_settings) as services:
        store, publisher = services.store, services.publisher
        checksums = {
            layer: checksum_sha256(
                published_item(publisher, declaration.id, f"demo_{layer}")["assets"][
                    f"demo_{layer}"
                ]["file:checksum"]
            )
            for layer in DEMO_LAYERS
        }
        # Behind the platform's back: one object deleted, one overwritten with garbage of the
        # same size (what a careless sync or a second writer would do).
        store.delete(f"{prefix}/demo_elevation.tif")
        landcover = store.stat(f"{prefix}/demo_landcover.tif")
        assert landcover is not None
        garbage = Path(any_settings.home) / "garbage.tif"
        garbage.write_bytes(b"\0" * landcover.size)
        time.sleep(0.05)  # the local store's sidecar must predate the overwrite
        overwrite_behind_the_back(any_settings, store, f"{prefix}/demo_landcover.tif", garbage)

        before = audit_dataset(declaration, any_settings, instance)
        assert sorted((d.item_id, d.drift) for d in before.drifted) == [
            ("demo_elevation", "missing_object"),
            ("demo_landcover", "changed"),
        ]
        assert before.affected_partitions == ["elevation", "landcover"]

        again = materialize_dataset(declaration, any_settings, instance)

        assert again.ok and (again.published, again.skipped) == (2, 1)
        for layer in DEMO_LAYERS:
            stored = store.stat(f"{prefix}/demo_{layer}.tif")
            assert stored is not None and stored.sha256 == checksums[layer], layer
            assert str(stored.owner) == f"{declaration.id}/demo_{layer}"
    for layer in ("elevation", "landcover"):
        assert latest_metadata(instance, keys.step("object"), layer)["uploaded"] == 1
    # The skipped partition's latest materialization still says what it is and what was checked.
    skipped = {
        step: latest_metadata(instance, keys.step(step), "temperature")
        for step in ("cog", "object", "stac_item")
    }
    assert all(metadata["skipped"] is True for metadata in skipped.values())
    assert skipped["cog"]["crs"] and skipped["cog"]["dtype"] == "float32"
    assert skipped["object"]["key"] == f"{prefix}/demo_temperature.tif"
    assert skipped["object"]["objects_verified"] == 1
    assert skipped["stac_item"]["item_ids"] == ["demo_temperature"]
    assert skipped["stac_item"]["processed_in_run"] == first.runs[0].run_id
    assert "sha256" in skipped["stac_item"]["skip_reason"]
    assert_no_drift(declaration, any_settings, instance)


def overwrite_behind_the_back(settings: Settings, store, key: str, garbage: Path) -> None:
    if settings.object_store == "s3":
        # A plain PUT: no checksum or owner metadata, as any other tool would write it.
        store.client.put_object(Bucket=store.bucket, Key=key, Body=garbage.read_bytes())
    else:
        (Path(settings.objects_dir) / key).write_bytes(garbage.read_bytes())


def forge_behind_the_back(settings: Settings, store, key: str) -> bytes:
    """Overwrite `key` with garbage of the same size under the metadata of the object it
    replaces: S3's x-amz-meta-* (sha256, owner...) copied, or the local file's sidecars kept and
    its mtime put back. The garbage."""
    stored = store.stat(key)
    assert stored is not None
    garbage = os.urandom(stored.size)
    if settings.object_store == "s3":
        head = store.client.head_object(Bucket=store.bucket, Key=key)
        store.client.put_object(
            Bucket=store.bucket,
            Key=key,
            Body=garbage,
            Metadata=head["Metadata"],
            ContentType=head["ContentType"],
        )
    else:
        path = Path(settings.objects_dir) / key
        before = path.stat()
        path.write_bytes(garbage)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return garbage


@pytest.mark.slow
def test_garbage_under_copied_metadata_is_found_by_the_audit_and_repaired(
    any_settings: Settings, unique_id: str
) -> None:
    declaration = demo_declaration(f"demo-{unique_id}")
    keys = DatasetKeys(declaration.id)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(declaration, any_settings, instance).ok
    cog = f"io/{declaration.id}/demo_landcover.tif"
    with built_services(any_settings) as services:
        store = services.store
        good = store.get_bytes(cog)
        forge_behind_the_back(any_settings, store, cog)

        report = audit_dataset(declaration, any_settings, instance)
        assert [(d.item_id, d.drift) for d in report.drifted] == [("demo_landcover", "changed")]
        assert report.affected_partitions == ["landcover"] and not report.clean

        again = materialize_dataset(declaration, any_settings, instance)  # skips the others
        assert again.ok and (again.published, again.skipped) == (1, 2)
        assert store.get_bytes(cog) == good

        # A forced run rewrites every object, so it repairs one forged since too.
        forge_behind_the_back(any_settings, store, cog)
        forced = materialize_dataset(declaration, any_settings, instance, tags={FORCE_TAG: "true"})
        assert forced.ok and forced.published == 3
        assert store.get_bytes(cog) == good
    assert latest_metadata(instance, keys.step("object"), "landcover")["uploaded"] == 1
    assert_no_drift(declaration, any_settings, instance)


def test_force_redoes_unchanged_partitions(local_settings: Settings) -> None:
    declaration = demo_declaration("demo-force")
    keys = DatasetKeys(declaration.id)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(declaration, local_settings, instance).ok
    assert materialize_dataset(declaration, local_settings, instance).skipped == 3

    forced = materialize_dataset(declaration, local_settings, instance, tags={FORCE_TAG: "true"})

    assert forced.ok and (forced.published, forced.skipped) == (3, 0)
    for layer in DEMO_LAYERS:
        # Redone from the source: every object written again (whatever the store holds), the
        # same item, so it is unchanged in the catalog.
        assert latest_metadata(instance, keys.step("object"), layer)["uploaded"] == 1
        assert latest_metadata(instance, keys.step("stac_item"), layer)["unchanged"] == 1


def test_a_dataset_with_history_fails_when_its_store_cannot_be_reached(
    service_settings: Settings, services_env, unique_id: str, tcp_proxy_factory
) -> None:
    declaration = demo_declaration(f"demo-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(declaration, service_settings, instance).ok

    # A wrong bucket: every partition fails naming it, none passes as skipped.
    wrong_bucket = Settings.from_env(
        {
            **services_env,
            "BQ_S3_BUCKET": f"bq-no-such-{unique_id}",
            "BQ_HOME": str(service_settings.home),
            "BQ_LOCAL_DATA_ROOT": str(service_settings.local_data_root),
        }
    )
    done = materialize_dataset(declaration, wrong_bucket, instance)
    assert not done.ok and (done.published, done.skipped, done.failed) == (0, 0, 3)
    assert "NoSuchBucket" in failure_messages(instance)

    # An endpoint that is down (a short retry budget, so the test does not wait 150 s).
    proxy = tcp_proxy_factory(moto_port(services_env))
    proxy.down()
    unreachable = S3ObjectStoreResource(
        bucket=service_settings.s3_bucket or "",
        endpoint_url=proxy.url,
        region_name=service_settings.s3_region,
        aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
        public_base_url=service_settings.public_base_url,
        retry_budget_seconds=1.0,
    )
    defs = dataset_definitions(declaration, service_settings, object_store=unreachable)
    down = materialize_dataset(declaration, service_settings, instance, defs=defs)
    assert not down.ok and (down.published, down.skipped, down.failed) == (0, 0, 3)
    assert proxy.refused > 0


def test_two_datasets_writing_one_key_cannot_overwrite_each_other(local_settings: Settings) -> None:
    # Two declarations with the same folder and file names (refused at load when both are
    # declared; here built one by one, the store is the last line of defence).
    first = demo_declaration("owner-a", folder="shared")
    second = demo_declaration("owner-b", folder="shared")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(first, local_settings, instance).ok
    objects = Path(local_settings.objects_dir) / "io" / "shared"
    before = {p.name: p.read_bytes() for p in objects.glob("*.tif")}

    done = materialize_dataset(second, local_settings, instance)

    assert not done.ok and done.failed == 3
    messages = failure_messages(instance)
    assert "owner-a/demo_landcover" in messages and "owner-b/demo_landcover" in messages
    assert {p.name: p.read_bytes() for p in objects.glob("*.tif")} == before
    with built_services(local_settings) as services:
        assert services.publisher.get_collection("owner-b") is None
    assert audit_dataset(first, local_settings, instance).clean


def test_the_audit_check_reports_drift_with_counts_and_ids(local_settings: Settings) -> None:
    declaration = demo_declaration("demo-check")
    keys = DatasetKeys(declaration.id)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(declaration, local_settings, instance).ok
    defs = dg.Definitions.merge(
        dataset_definitions(declaration, local_settings),
        dg.Definitions(
            jobs=[
                dg.define_asset_job(
                    "audit_only", selection=dg.AssetSelection.checks_for_assets(keys.collection)
                )
            ]
        ),
    )

    def evaluate() -> dg.AssetCheckEvaluation:
        result = defs.resolve_job_def("audit_only").execute_in_process(instance=instance)
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.check_name == AUDIT_CHECK
        return evaluation

    clean = evaluate()
    assert clean.passed and clean.metadata["items"].value == 3
    objects = Path(local_settings.objects_dir) / "io" / declaration.id
    (objects / "demo_temperature.tif").unlink()
    (objects / "left-by-a-crash.tif").write_bytes(b"orphan")

    drift = evaluate()

    assert not drift.passed
    metadata = {name: value.value for name, value in drift.metadata.items()}
    assert (metadata["missing_objects"], metadata["orphans"], metadata["items"]) == (1, 1, 3)
    assert metadata["orphan_keys"] == [f"io/{declaration.id}/left-by-a-crash.tif"]
    assert metadata["affected_partitions"] == ["temperature"]
    [missing] = metadata_value(drift.metadata, "drifted_items", list)
    assert missing.startswith("demo_temperature") and "missing_object" in missing


def test_the_audit_check_warns_of_gaps_and_fails_on_drift(local_settings: Settings) -> None:
    declaration = demo_declaration("demo-gaps")
    keys = DatasetKeys(declaration.id)
    instance = dg.DagsterInstance.ephemeral()
    # A backfill cut short: one partition of three published.
    assert materialize_dataset(declaration, local_settings, instance, ["landcover"]).ok
    defs = dg.Definitions.merge(
        dataset_definitions(declaration, local_settings),
        dg.Definitions(
            jobs=[
                dg.define_asset_job(
                    "audit_only", selection=dg.AssetSelection.checks_for_assets(keys.collection)
                )
            ]
        ),
    )

    def evaluate() -> dg.AssetCheckEvaluation:
        result = defs.resolve_job_def("audit_only").execute_in_process(instance=instance)
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    gaps = evaluate()

    assert not gaps.passed and gaps.severity == dg.AssetCheckSeverity.WARN
    metadata = {name: value.value for name, value in gaps.metadata.items()}
    assert (metadata["partitions"], metadata["missing_partitions"], metadata["items"]) == (3, 2, 1)
    assert metadata["missing_partition_keys"] == ["elevation", "temperature"]
    assert metadata["missing_items"] == 2 and metadata["drifted_items"] == []
    assert "no drift" not in (gaps.description or "")
    assert "GAPS (2 of 3 partitions not published)" in (gaps.description or "")

    (Path(local_settings.objects_dir) / "io" / declaration.id / "demo_landcover.tif").unlink()
    drift = evaluate()
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
    assert "DRIFT" in (drift.description or "")

    assert materialize_dataset(declaration, local_settings, instance).ok
    complete = evaluate()
    assert complete.passed and "no drift" in (complete.description or "")


# ---------------------------------------------------------------------------- isolation


@pytest.fixture(params=["file", "postgres"])
def locked(request, monkeypatch, services_env) -> tuple[Settings, Locks]:
    """Settings whose runs take file locks (embedded defaults) or PostgreSQL advisory locks
    (BQ_PGSTAC_DSN set, as in production), and the same locks for the test to hold."""
    if request.param == "file":
        settings = request.getfixturevalue("local_settings")
        locks: Locks = FileLocks(settings.work_dir / LOCKS_FOLDER)
    else:
        monkeypatch.setenv("BQ_PGSTAC_DSN", services_env["BQ_PGSTAC_DSN"])
        settings = request.getfixturevalue("service_settings")
        locks = PostgresLocks(services_env["BQ_PGSTAC_DSN"])
    kind = type(resources_for(settings)["locks"]).__name__
    assert kind == {"file": "FileLocksResource", "postgres": "PostgresLocksResource"}[request.param]
    return settings, locks


def run_in_thread(target, *args, **kwargs) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(target(*args, **kwargs)))
    thread.start()
    return thread, outcome


def wait_for(condition, what: str, timeout: float = RUN_TIMEOUT) -> None:
    wait_until(condition, timeout=timeout, what=what, poll=0.05)


def logged(instance: dg.DagsterInstance, text: str) -> bool:
    return any(
        text in (entry.user_message or "")
        for run in instance.get_runs()
        for entry in instance.all_logs(run.run_id)
    )


def test_a_run_waits_while_another_run_holds_its_partition(
    locked: tuple[Settings, Locks], tmp_path: Path, unique_id: str
) -> None:
    settings, locks = locked
    declaration = demo_declaration(f"demo-{unique_id}")
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"), NO_TELEMETRY)
    with built_services(settings) as services:
        publisher = services.publisher
        # Another run is publishing `elevation`: this run publishes `landcover`, then waits.
        with locks.hold(partition_lock_name(declaration.id, "elevation")):
            thread, outcome = run_in_thread(materialize_dataset, declaration, settings, instance)
            wait_for(lambda: logged(instance, "[elevation]: waiting for another run"), "a wait")
            assert publisher.get_item(declaration.id, "demo_landcover") is not None
            assert publisher.get_item(declaration.id, "demo_elevation") is None
            assert thread.is_alive()
        thread.join(RUN_TIMEOUT)
    [done] = outcome
    assert done.ok and done.published == 3
    assert_no_drift(declaration, settings, instance)
    instance.dispose()


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BQ_", "DAGSTER_"))}
    return {**env, "BQ_HOME": str(home)}


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "bq-pipelines"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    return process.returncode, out + err


def published_catalog(home: Path) -> dict[str, tuple[dict[str, Any], bytes]]:
    """Each demo item (object hrefs relative to the objects folder) with its objects' bytes
    (the COG's, then the thumbnail's)."""
    objects = str((home / "objects").absolute())
    catalog = {}
    for path in sorted((home / "catalog" / "demo").glob("*/*.json")):
        item = json.loads(path.read_text())
        contents = b""
        for name in (item["id"], "thumbnail"):
            href = item["assets"][name]["href"]
            item["assets"][name]["href"] = href.removeprefix(objects)
            contents += Path(href).read_bytes()
        catalog[item["id"]] = (item, contents)
    return catalog


@pytest.mark.slow
def test_two_concurrent_cli_runs_of_the_same_partitions_both_succeed(tmp_path: Path) -> None:
    # Two `bq-pipelines materialize demo` at once on a new BQ_HOME (so on a new instance,
    # `$BQ_HOME/dagster`, which both create), then one alone elsewhere as the reference. Each
    # partition is published by one of them; the other waits for its lock, then finds it
    # done (skipped) or publishes it again identically.
    together, alone = tmp_path / "together", tmp_path / "alone"
    for home in (together, alone):
        assert finished(cli("demo-data", env=cli_env(home)))[0] == 0
    first = cli("materialize", "demo", env=cli_env(together))
    second = cli("materialize", "demo", env=cli_env(together))
    results = [finished(first), finished(second)]
    for status, output in results:
        assert status == 0, output
        totals = re.search(r"total: 3 partitions, (\d) published, (\d) skipped, 0 failed", output)
        assert totals is not None and int(totals[1]) + int(totals[2]) == 3, output
    assert finished(cli("materialize", "demo", env=cli_env(alone)))[0] == 0

    assert published_catalog(together) == published_catalog(alone)
    assert len(published_catalog(together)) == 3
    assert not list((together / "work").glob("run-*")), "a staging folder was left behind"
    status, output = finished(cli("audit", "demo", env=cli_env(together)))
    assert status == 0 and "demo: no drift" in output, output


# -------------------------------------------------------------------------------- faults


def test_kill_9_mid_publish_then_rerun_leaves_no_drift(
    services_env,
    s3_client,
    s3_bucket,
    tmp_path,
    demo_sources,
    monkeypatch,
    unique_id,
    tcp_proxy_factory,
) -> None:
    # The STAC API is down while the run publishes: the run has uploaded an object and is
    # retrying its publication when it is killed.
    api = tcp_proxy_factory(int(services_env["BQ_STAC_API_URL"].rsplit(":", 1)[1]))
    settings = services_settings(
        services_env, s3_bucket, tmp_path / "bq", demo_sources, monkeypatch
    )
    declaration = demo_declaration(f"demo-{unique_id}")
    path = declaration_file(declaration.id, tmp_path / f"{declaration.id}.yaml")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BQ_", "DAGSTER_"))},
        **services_env,
        "BQ_HOME": str(settings.home),
        "BQ_S3_BUCKET": s3_bucket,
        "BQ_PUBLIC_BASE_URL": settings.public_base_url or "",
        "BQ_LOCAL_DATA_ROOT": str(demo_sources),
        "BQ_PGSTAC_DSN": services_env["BQ_PGSTAC_DSN"],  # partition locks in PostgreSQL
        "PYTHONPATH": python_path(),
    }
    command = [sys.executable, "-m", "bq_pipelines_tests.materialize_process", str(path)]
    dagster_dir = str(tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    api.down()
    killed = subprocess.Popen(
        [*command, dagster_dir], env={**env, "BQ_STAC_API_URL": api.url}, cwd=PROJECT_ROOT
    )
    wait_for(
        lambda: (
            s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) > 0 and api.refused > 2
        ),
        "an upload, then publication attempts",
    )
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    api.up()
    instance = dg.DagsterInstance.local_temp(dagster_dir, NO_TELEMETRY)
    crashed = audit_dataset(declaration, settings, instance)
    assert crashed.items == 0 and len(crashed.orphans) == crashed.objects >= 1
    assert list((settings.work_dir).glob("run-*")), "the killed run's staging folder"

    rerun = subprocess.run([*command, dagster_dir], env=env, cwd=PROJECT_ROOT, timeout=RUN_TIMEOUT)

    assert rerun.returncode == 0
    assert_no_drift(declaration, settings, instance)
    assert not list((settings.work_dir).glob("run-*")), "staging folders of dead runs are swept"
    instance.dispose()


@pytest.mark.slow
def test_audit_command_reports_and_repairs(tmp_path: Path) -> None:
    home = tmp_path / "bq"
    env = cli_env(home)
    assert finished(cli("demo-data", env=env))[0] == 0
    assert finished(cli("materialize", "demo", env=env))[0] == 0
    status, output = finished(cli("materialize", "demo", "--force", env=env))
    assert status == 0 and "total: 3 partitions, 3 published, 0 skipped" in output, output
    objects = home / "objects" / "io" / "demo"
    (objects / "demo_elevation.tif").unlink()
    (objects / "crash-leftover.tif").write_bytes(b"orphan")
    # An item nobody planned (a partition since removed from the declaration, say).
    extra = json.loads(
        (home / "catalog" / "demo" / "demo_landcover" / "demo_landcover.json").read_text()
    )
    extra["id"] = "demo_retired"
    extra["assets"] = {"demo_retired": extra["assets"].pop("demo_landcover")} | extra["assets"]
    extra["assets"]["demo_retired"]["href"] = str(objects / "demo_retired.tif")
    del extra["assets"]["thumbnail"]  # landcover's: it would be an object shared by two items
    settings = Settings.from_env({"BQ_HOME": str(home)})
    with built_services(settings) as services:
        services.publisher.upsert_item(pystac.Item.from_dict(extra))

    status, output = finished(cli("audit", "demo", env=env))
    assert status == 1, output
    assert (
        # 2 COGs and 3 thumbnails of the 3 planned items, and the leftover.
        "demo: DRIFT: 4 items, 6 objects, 1 missing object, 0 changed objects, 1 orphan, "
        "1 item outside the partitions, 0 items of the ingestion API, 0 duplicates" in output
    )
    assert "io/demo/crash-leftover.tif" in output and "demo_retired" in output

    status, output = finished(cli("audit", "demo", "--fix", env=env))
    assert "deleted 1 orphan object\n" in output and "re-publishing 1 partition\n" in output
    assert not (objects / "crash-leftover.tif").exists()
    assert (objects / "demo_elevation.tif").is_file()
    assert status == 1 and "1 item lies outside the dataset's partitions" in output, output

    with built_services(settings) as services:
        services.publisher.delete_item("demo", "demo_retired")
    status, output = finished(cli("audit", "demo", env=env))
    assert status == 0 and "demo: no drift: 3 items, 6 objects" in output, output


@pytest.mark.slow
def test_audit_command_reports_a_half_done_backfill_apart_from_drift(tmp_path: Path) -> None:
    home = tmp_path / "bq"
    env = cli_env(home)
    assert finished(cli("demo-data", env=env))[0] == 0
    status, output = finished(cli("materialize", "demo", "--partition", "elevation", env=env))
    assert status == 0, output

    status, output = finished(cli("audit", "demo", env=env))

    # Gaps are reported (exit 0: nothing is wrong with what is published), never "no drift".
    assert status == 0, output
    assert "no drift" not in output
    assert (
        "demo: GAPS (2 of 3 partitions not published): 1 item, 2 objects, 0 missing objects, "
        "0 changed objects, 0 orphans, 0 items outside the partitions, 0 items of the ingestion "
        "API, 0 duplicates, 3 partitions, 2 missing partitions, 2 missing items" in output
    )
    assert "  missing_partition_keys:\n    landcover\n    temperature" in output

    # Drift on top of the gaps: exit 1.
    (home / "objects" / "io" / "demo" / "demo_elevation.tif").unlink()
    status, output = finished(cli("audit", "demo", env=env))
    assert status == 1 and "demo: DRIFT: 1 item, 1 object, 1 missing object" in output


# ----------------------------------------------------------------- the ingestion API's items


def test_items_the_ingestion_api_published_are_the_apis_not_drift(
    local_settings: Settings, demo_sources: Path, unique_id: str
) -> None:
    """An item the API published into a dataset's collection (its object records the API as
    its writer) is listed apart and never fails the audit; any other unplanned item does."""
    declaration = demo_declaration(f"demo-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(declaration, local_settings, instance).ok
    with built_services(local_settings) as services:
        [plan] = plan_partition(
            declaration, {"layer": "elevation"}, SourceLocations({}, demo_sources)
        )
        api_plan = replace(plan, item_id="sent_by_a_user", file_name="sent_by_a_user.tif")
        run_items([replace(api_plan, writer=API_WRITER, thumbnail=False)], services, "api")

    report = audit_dataset(declaration, local_settings, instance)
    assert report.clean and report.api_items == ["sent_by_a_user"], report.listing()
    assert report.outside_partitions == []
    assert "1 item of the ingestion API" in report.summary()

    # The same item written by anyone else lies outside the partitions: that is drift.
    with built_services(local_settings) as services:
        stray = replace(api_plan, item_id="stray", file_name="stray.tif", thumbnail=False)
        run_items([stray], services, "stray")
    report = audit_dataset(declaration, local_settings, instance)
    assert not report.clean and report.outside_partitions == ["stray"]
    assert report.api_items == ["sent_by_a_user"]
