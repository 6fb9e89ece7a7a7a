"""Settings from the environment: embedded defaults, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.settings import Settings


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
        ({"BQ_SOURCE_BASE_URLS": "chelsa"}, "BQ_SOURCE_BASE_URLS: 'chelsa' is not host=url"),
        ({"BQ_SOURCE_BASE_URLS": "chelsa=gopher://x"}, "BQ_SOURCE_BASE_URLS[chelsa]"),
        ({"BQ_STAC_SCHEMAS_DIR": "/nonexistent/schemas"}, "BQ_STAC_SCHEMAS_DIR: '/nonexistent"),
        ({"BQ_BACKUP_TIME": "4h"}, "BQ_BACKUP_TIME: '4h' is not a time of day HH:MM"),
        ({"BQ_BACKUP_TIME": "24:00"}, "BQ_BACKUP_TIME: '24:00' is not a time of day"),
        ({"BQ_BACKUP_RETENTION_DAYS": "a month"}, "BQ_BACKUP_RETENTION_DAYS: 'a month' is not a"),
        ({"BQ_BACKUP_RETENTION_DAYS": "0"}, "BQ_BACKUP_RETENTION_DAYS: 0 is below the minimum 1"),
        ({"BQ_BACKUP_KEEP_LAST": "-1"}, "BQ_BACKUP_KEEP_LAST: -1 is below the minimum 1"),
        ({"BQ_BACKUP_SCHEDULE_ENABLED": "sometimes"}, "BQ_BACKUP_SCHEDULE_ENABLED: 'sometimes'"),
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


def test_backup_defaults_and_a_dsn_kept_out_of_reprs():
    settings = Settings.from_env({"BQ_PGSTAC_DSN": "postgresql://u:s3cret@db:5432/catalog"})
    assert settings.backup_time == (4, 0)
    assert settings.backup_schedule_enabled is True
    assert (settings.backup_retention_days, settings.backup_keep_last) == (30, 7)
    assert settings.backup_retention_dry_run is False
    assert settings.pgstac_dsn == "postgresql://u:s3cret@db:5432/catalog"
    assert "s3cret" not in repr(settings)
    later = Settings.from_env({"BQ_BACKUP_TIME": "23:05", "BQ_BACKUP_KEEP_LAST": "3"})
    assert (later.backup_time, later.backup_keep_last) == ((23, 5), 3)
