"""Settings from the environment: embedded defaults, and errors naming the variable."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.resources import SourcesResource, resources_for
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.services import TEST_STACK_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_embedded_and_local():
    settings = Settings.from_env({})
    assert settings.object_store == "local"
    assert settings.catalog == "static"
    assert settings.objects_dir == Path(".bq/objects")
    assert settings.catalog_dir == Path(".bq/catalog")


def test_services_settings(tmp_path):
    settings = Settings.from_env(
        {
            "BQ_OBJECT_STORE": "s3",
            "BQ_S3_BUCKET": "bq-io",
            "BQ_S3_ENDPOINT_URL": "http://127.0.0.1:9010",
            "BQ_CATALOG": "stac-api",
            "BQ_STAC_API_URL": "http://127.0.0.1:8082/",
            "BQ_SOURCE_BASE_URLS": "chelsa=http://127.0.0.1:1/chelsa, esa=ftp://127.0.0.1:2/cci",
            "BQ_STAC_SCHEMAS_DIR": str(tmp_path),
            "BQ_S3_PUBLIC_READ": "true",
        }
    )
    assert settings.stac_api_url == "http://127.0.0.1:8082"
    assert settings.source_base_urls == {
        "chelsa": "http://127.0.0.1:1/chelsa",
        "esa": "ftp://127.0.0.1:2/cci",
    }
    assert settings.s3_public_read is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BQ_OBJECT_STORE": "gcs"}, "BQ_OBJECT_STORE: 'gcs' is not one of local, s3"),
        ({"BQ_OBJECT_STORE": "s3"}, "BQ_S3_BUCKET: required when BQ_OBJECT_STORE=s3"),
        ({"BQ_CATALOG": "stac-api"}, "BQ_STAC_API_URL: required when BQ_CATALOG=stac-api"),
        ({"BQ_STAC_API_URL": "localhost:8082"}, "BQ_STAC_API_URL: 'localhost:8082' is not a URL"),
        ({"BQ_S3_PUBLIC_READ": "maybe"}, "BQ_S3_PUBLIC_READ: 'maybe' is not a boolean"),
        (
            {"BQ_PUBLIC_BASE_URL": "https://u:pw@cdn.example.org/io"},
            "BQ_PUBLIC_BASE_URL: must not carry credentials",
        ),
        (
            {"BQ_S3_ENDPOINT_URL": "http://key:secret@127.0.0.1:9010"},
            "BQ_S3_ENDPOINT_URL: must not carry credentials",
        ),
        ({"BQ_SOURCE_BASE_URLS": "chelsa"}, "BQ_SOURCE_BASE_URLS: 'chelsa' is not host=url"),
        ({"BQ_SOURCE_BASE_URLS": "chelsa=gopher://x"}, "BQ_SOURCE_BASE_URLS[chelsa]"),
        ({"BQ_STAC_SCHEMAS_DIR": "/nonexistent/schemas"}, "BQ_STAC_SCHEMAS_DIR: '/nonexistent"),
        ({"BQ_BACKUP_TIME": "4h"}, "BQ_BACKUP_TIME: '4h' is not a time of day HH:MM"),
        ({"BQ_BACKUP_TIME": "24:00"}, "BQ_BACKUP_TIME: '24:00' is not a time of day"),
        ({"BQ_BACKUP_RETENTION_DAYS": "a month"}, "BQ_BACKUP_RETENTION_DAYS: 'a month' is not a"),
        ({"BQ_BACKUP_RETENTION_DAYS": "0"}, "BQ_BACKUP_RETENTION_DAYS: 0 is below the minimum 1"),
        ({"BQ_BACKUP_KEEP_LAST": "-1"}, "BQ_BACKUP_KEEP_LAST: -1 is below the minimum 1"),
        ({"BQ_BACKUP_SCHEDULE_ENABLED": "sometimes"}, "BQ_BACKUP_SCHEDULE_ENABLED: 'sometimes'"),
        ({"BQ_TILER_URL": "127.0.0.1:8383"}, "BQ_TILER_URL: '127.0.0.1:8383' is not a URL"),
        ({"BQ_TILER_URL": "http://u:pw@127.0.0.1:8383"}, "BQ_TILER_URL: must not carry"),
        ({"BQ_BROWSE_URL": "ftp://127.0.0.1/"}, "BQ_BROWSE_URL: 'ftp://127.0.0.1/' is not a URL"),
        ({"BQ_BACKUP_RETENTION_DRY_RUN": "perhaps"}, "BQ_BACKUP_RETENTION_DRY_RUN: 'perhaps'"),
        ({"BQ_PG_BIN_DIR": "/nonexistent/bin"}, "BQ_PG_BIN_DIR: '/nonexistent/bin' is not a dir"),
        ({"BQ_PGSTAC_DSN": "postgresql://u:pw@h"}, "BQ_PGSTAC_DSN: names no database"),
        ({"BQ_EXECUTOR": "dask"}, "BQ_EXECUTOR: 'dask' is not one of multiprocess, celery"),
        ({"BQ_EXECUTOR": "celery"}, "BQ_CELERY_BROKER_URL: required when BQ_EXECUTOR=celery"),
        (
            {"BQ_EXECUTOR": "celery", "BQ_CELERY_BROKER_URL": "redis://r:6379/0"},
            "BQ_CELERY_BACKEND_URL: required when BQ_EXECUTOR=celery",
        ),
        (
            {"BQ_CELERY_VISIBILITY_TIMEOUT": "1h"},
            "BQ_CELERY_VISIBILITY_TIMEOUT: '1h' is not a whole number",
        ),
        (
            {"BQ_CELERY_VISIBILITY_TIMEOUT": "0"},
            "BQ_CELERY_VISIBILITY_TIMEOUT: 0 is below the minimum 1",
        ),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert message in str(error.value)


def test_secret_values_never_appear_in_errors():
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"BQ_OBJECT_STORE": "s3", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert "s3cr3t-value" not in str(error.value)
    for env, host in (
        ({"BQ_STAC_API_URL": "ftp://user:s3cr3t-value@stac.example.org"}, "stac.example.org"),
        (
            {"BQ_SOURCE_BASE_URLS": "chelsa=gopher://user:s3cr3t-value@mirror.example.org"},
            "mirror.example.org",
        ),
    ):
        with pytest.raises(ConfigError) as error:
            Settings.from_env(env)
        assert "s3cr3t-value" not in str(error.value) and host in str(error.value)


def test_limits_of_sources_default_and_are_validated():
    settings = Settings.from_env({})
    # Above ESA CCI's 129,600 x 64,800 pixels, the largest declared source; below 100,000^2.
    assert 129_600 * 64_800 < settings.max_pixels < 100_000 * 100_000
    assert settings.max_download_bytes == 16 * 1024**3
    chosen = Settings.from_env({"BQ_MAX_PIXELS": "1000", "BQ_MAX_DOWNLOAD_BYTES": "2048"})
    assert (chosen.max_pixels, chosen.max_download_bytes) == (1000, 2048)
    for env, message in (
        ({"BQ_MAX_PIXELS": "many"}, "BQ_MAX_PIXELS: 'many' is not a number"),
        ({"BQ_MAX_PIXELS": "0"}, "BQ_MAX_PIXELS: '0' is outside 1.."),
        ({"BQ_MAX_DOWNLOAD_BYTES": "-1"}, "BQ_MAX_DOWNLOAD_BYTES: '-1' is outside 1.."),
        ({"BQ_MAX_DOWNLOAD_BYTES": "4GB"}, "BQ_MAX_DOWNLOAD_BYTES: '4GB' is not a number"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            Settings.from_env(env)


def test_item_workers_default_to_the_machine_and_are_validated():
    assert Settings.from_env({}).item_workers == 0  # one per usable CPU
    chosen = Settings.from_env({"BQ_ITEM_WORKERS": "3"})
    assert chosen.item_workers == 3
    sources = resources_for(chosen)["sources"]
    assert isinstance(sources, SourcesResource) and sources.item_workers == 3
    for value, message in (("two", "is not a whole number"), ("-1", "is below the minimum 0")):
        with pytest.raises(ConfigError, match=f"BQ_ITEM_WORKERS: .*{message}"):
            Settings.from_env({"BQ_ITEM_WORKERS": value})


def test_backup_defaults_and_a_dsn_kept_out_of_reprs():
    settings = Settings.from_env({"BQ_PGSTAC_DSN": "postgresql://u:s3cret@db:5432/catalog"})
    assert settings.backup_time == (4, 0)
    assert settings.backup_schedule_enabled is False  # compose turns it on
    assert (settings.backup_retention_days, settings.backup_keep_last) == (30, 7)
    assert settings.backup_retention_dry_run is False
    assert settings.pgstac_dsn == "postgresql://u:s3cret@db:5432/catalog"
    assert "s3cret" not in repr(settings)
    later = Settings.from_env({"BQ_BACKUP_TIME": "23:05", "BQ_BACKUP_KEEP_LAST": "3"})
    assert (later.backup_time, later.backup_keep_last) == ((23, 5), 3)


def test_the_ui_port_sets_where_the_api_links_runs_and_where_make_serves_the_ui():
    from bq_pipelines.settings import ApiSettings

    assert ApiSettings.from_env({}).dagster_ui_url == "http://127.0.0.1:3000"
    assert ApiSettings.from_env({"BQ_UI_PORT": "3999"}).dagster_ui_url == "http://127.0.0.1:3999"
    explicit = {"BQ_UI_PORT": "3999", "BQ_DAGSTER_UI_URL": "https://bq.example/dagster"}
    assert ApiSettings.from_env(explicit).dagster_ui_url == "https://bq.example/dagster"
    with pytest.raises(ConfigError, match=re.escape("BQ_UI_PORT: '70000' is outside 1..65535")):
        ApiSettings.from_env({"BQ_UI_PORT": "70000"})
    # What `make dev` and `make ui` would run (-n: printed, not run).
    env = {**os.environ, "BQ_UI_PORT": "3999"}
    for target, command in (("dev", "dg dev --host 127.0.0.1 --port 3999"), ("ui", "-p 3999")):
        printed = subprocess.run(
            ["make", "-n", target],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert command in printed, printed


def test_tiler_and_browse_urls_are_optional():
    assert (Settings().tiler_url, Settings().browse_url) == (None, None)
    chosen = Settings.from_env(
        {"BQ_TILER_URL": "http://127.0.0.1:8383/", "BQ_BROWSE_URL": "http://127.0.0.1:8384"}
    )
    assert (chosen.tiler_url, chosen.browse_url) == (
        "http://127.0.0.1:8383",
        "http://127.0.0.1:8384",
    )


def test_the_services_env_file_is_its_owners_only(services_env: dict[str, str]) -> None:
    # `scripts/services.py up` writes the S3 keys and the catalog's DSN into it (rewritten on
    # every `up`, which the fixture ran; `make services`' file is written by the same code).
    assert "AWS_SECRET_ACCESS_KEY" in services_env and "BQ_PGSTAC_DSN" in services_env
    assert stat.S_IMODE(TEST_STACK_ENV.stat().st_mode) == 0o600
