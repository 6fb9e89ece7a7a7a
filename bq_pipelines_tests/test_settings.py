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
        ({"BQ_EXECUTOR": "dask"}, "BQ_EXECUTOR: 'dask' is not one of multiprocess, celery"),
        ({"BQ_EXECUTOR": "celery"}, "BQ_CELERY_BROKER_URL: required when BQ_EXECUTOR=celery"),
        (
            {"BQ_EXECUTOR": "celery", "BQ_CELERY_BROKER_URL": "redis://r:6379/0"},
            "BQ_CELERY_BACKEND_URL: required when BQ_EXECUTOR=celery",
        ),
        ({"BQ_CELERY_VISIBILITY_TIMEOUT": "1h"}, "BQ_CELERY_VISIBILITY_TIMEOUT: '1h' is not an"),
        (
            {"BQ_CELERY_VISIBILITY_TIMEOUT": "0"},
            "BQ_CELERY_VISIBILITY_TIMEOUT: '0' must be greater",
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
