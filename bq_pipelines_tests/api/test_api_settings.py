"""The ingestion API's settings (errors name the variable), the request model, and how a request
becomes an item plan (COG settings from the collection's declaration)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.ingestion.__main__ import token_from_file
from bq_pipelines.ingestion.models import NewItem
from bq_pipelines.ingestion.processing import DEFAULT_COG, plan_request
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.settings import ApiSettings, api_token
from bq_pipelines_testkit.dagster_processes import PROJECT_ROOT


def test_defaults_are_closed_and_local():
    settings = ApiSettings.from_env({"BQ_HOME": "/srv/bq"})
    assert (settings.host, settings.port) == ("127.0.0.1", 8083)
    assert settings.database_url == "sqlite:////srv/bq/api/requests.sqlite"
    assert not settings.database_from_env
    assert settings.allowed_sources == ()  # no source is allowed until the operator says so
    assert settings.public_status is False
    assert "requests.sqlite" not in repr(settings)  # the URL may hold a password: not shown


def test_api_settings_from_the_environment():
    settings = ApiSettings.from_env(
        {
            "BQ_API_PORT": "9000",
            "BQ_API_DATABASE_URL": "postgresql://bq:secret@db:5432/requests",
            "BQ_API_ALLOWED_SOURCES": "https://data.example.org/rasters/, https://",
            "BQ_API_PUBLIC_STATUS": "true",
            "BQ_API_MAX_DOWNLOAD_BYTES": "1000",
            "BQ_DAGSTER_UI_URL": "https://dagster.example.org/",
        }
    )
    assert settings.port == 9000 and settings.database_from_env
    assert settings.allowed_sources == ("https://data.example.org/rasters/", "https://")
    assert settings.public_status and settings.max_download_bytes == 1000
    assert settings.dagster_ui_url == "https://dagster.example.org"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BQ_API_PORT": "http"}, "BQ_API_PORT: 'http' is not a number"),
        ({"BQ_API_PORT": "70000"}, "BQ_API_PORT: '70000' is outside 1..65535"),
        ({"BQ_API_DATABASE_URL": "mysql://x"}, "BQ_API_DATABASE_URL: not a postgresql://"),
        ({"BQ_API_ALLOWED_SOURCES": "data.example.org"}, "BQ_API_ALLOWED_SOURCES[0]"),
        ({"BQ_API_ALLOWED_SOURCES": "https://,ftp://"}, "BQ_API_ALLOWED_SOURCES[1]"),
        ({"BQ_API_PUBLIC_STATUS": "maybe"}, "BQ_API_PUBLIC_STATUS: 'maybe' is not a boolean"),
        ({"BQ_API_MAX_BODY_BYTES": "10"}, "BQ_API_MAX_BODY_BYTES: '10' is outside"),
        ({"BQ_API_STAC_API_ALIASES": "stac.example"}, "BQ_API_STAC_API_ALIASES[0]"),
        ({"BQ_DAGSTER_UI_URL": "localhost:3000"}, "BQ_DAGSTER_UI_URL"),
    ],
)
def test_bad_api_settings_name_the_variable(env: dict[str, str], message: str):
    with pytest.raises(ConfigError) as error:
        ApiSettings.from_env(env)
    assert message in str(error.value)


def test_the_token_comes_from_the_environment_and_is_never_echoed():
    assert api_token({"BQ_API_TOKEN": "a-long-enough-token"}) == "a-long-enough-token"
    for env in ({}, {"BQ_API_TOKEN": ""}, {"BQ_API_TOKEN": "s3cr3t-v4lue"}):
        with pytest.raises(ConfigError, match="BQ_API_TOKEN") as error:
            api_token(env)
        assert "s3cr3t" not in str(error.value)


@pytest.mark.slow
def test_the_server_refuses_to_start_without_a_token():
    result = subprocess.run(
        [sys.executable, "-m", "bq_pipelines.ingestion"],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "BQ_API_TOKEN: required" in result.stderr


def item(**changes: object) -> NewItem:
    body = {
        "collection_id": "gfw-lossyear",
        "date": "2018-01-01",
        "name": "an-item",
        "filename": "source file.tif",
        "file_source_host": "https://data.example.org/rasters/",
        "properties": {"datetime": "1999-01-01T00:00:00Z", "description": "x"},
        "legacy_extra": "kept",
    }
    return NewItem.model_validate({**body, **changes})


def test_a_request_becomes_a_plan_with_the_declared_cog_settings():
    declarations = {d.id: d for d in load_declarations()}
    declared = plan_request(item(), declarations)
    assert declared.cog == declarations["gfw-lossyear"].cog.settings()
    assert declared.cog.categorical is True
    assert declared.folder == declarations["gfw-lossyear"].folder
    assert declared.file_name == "an-item.tif"
    [source] = declared.sources
    assert source.url == "https://data.example.org/rasters/source%20file.tif"
    assert (
        declared.datetime is not None
        and declared.datetime.isoformat() == "2018-01-01T00:00:00+00:00"
    )
    assert declared.properties == {"description": "x"}  # datetime comes from `date`

    undeclared = plan_request(item(collection_id="somebody-elses"), declarations)
    assert undeclared.cog == DEFAULT_COG and DEFAULT_COG.profile == "raw"
    assert undeclared.folder == "somebody-elses"


def test_unknown_fields_are_kept_and_dates_may_carry_a_time():
    request = item(date="2018-01-01T12:30:00-05:00")
    assert request.stored()["legacy_extra"] == "kept"
    assert request.moment.isoformat() == "2018-01-01T17:30:00+00:00"


def test_a_token_file_readable_by_others_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-token-that-others-can-read\n")
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        token_from_file(token_file)
    token_file.chmod(0o600)
    assert token_from_file(token_file) == "a-token-that-others-can-read"
