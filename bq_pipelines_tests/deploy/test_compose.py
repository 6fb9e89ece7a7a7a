"""deploy/compose.yaml, read as an operator's tool would: every service runs an image it can
build or pull, restarts by itself, is health-checked where it serves; every variable it reads is
documented in .env.example, and no secret is written in it. `docker-compose config` (Debian's
1.29, installed by `make deploy-tools`) validates it with a filled .env and refuses it, naming the
variable, while a secret is empty. No container engine runs here: nothing is started.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bq_pipelines.settings import ApiSettings, Settings, api_token
from bq_pipelines_tests.deploy.stack import (
    COMPOSE,
    DEPLOY_DIR,
    URL_VALUES,
    docker_compose,
    env_example,
    filled_env,
)

VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
# Services that answer on a port (one-shot jobs do not).
ONE_SHOT = {"pgstac-migrate", "ui-auth"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_every_service_has_an_image_a_restart_policy_and_a_healthcheck_where_it_serves():
    services = compose()["services"]
    assert {
        "dagster-webserver",
        "dagster-daemon",
        "code-server",
        "worker",
        "redis",
        "nginx",
        "api",
        "stac-api",
    } <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image nor build"
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    # Only nginx is reachable from outside; Transactions of the STAC API stay inside.
    assert [name for name, s in services.items() if s.get("ports")] == ["nginx"]


def test_stateful_services_keep_their_data_in_named_volumes():
    document = compose()
    named = set(document["volumes"])
    for name in ("dagster-postgres", "catalog-db", "redis"):
        sources = {mount.split(":")[0] for mount in document["services"][name]["volumes"]}
        assert sources & named, f"{name}: no named volume"


def test_every_variable_is_documented_in_env_example_and_no_secret_is_committed():
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    documented = env_example()
    assert used, "compose.yaml reads no variable?"
    assert used <= set(documented), f"not in .env.example: {sorted(used - set(documented))}"
    # Every documented variable is used (no stale documentation).
    assert set(documented) <= used, f"unused: {sorted(set(documented) - used)}"
    for key, value in documented.items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example: {key} must be empty (a secret)"


def test_no_secret_literal_in_the_deploy_files():
    documents = [COMPOSE, DEPLOY_DIR / "dagster.yaml", DEPLOY_DIR / "helm" / "values.yaml"]
    for path in documents:
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            key, sep, value = line.strip().lstrip("- ").partition(":")
            if line.lstrip().startswith("#") or not sep or not SECRET_NAME.search(key.upper()):
                continue
            value = value.strip().strip("'\"")
            # A secret is read from the environment or a Kubernetes Secret, never written here.
            reference = value.startswith(("${", "{env:")) or key.endswith("SecretName")
            assert reference or value in ("", "true", "false"), f"{path.name}:{line_no}: {line}"
    assert not (DEPLOY_DIR / ".env").exists() or ".env" in (DEPLOY_DIR / ".gitignore").read_text()
    assert not list(DEPLOY_DIR.rglob("htpasswd*")), "an htpasswd file is generated, never committed"


def test_docker_compose_validates_the_file_with_a_filled_env(tmp_path: Path):
    env = filled_env(tmp_path)
    result = docker_compose("--env-file", str(env), "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    worker = resolved["services"]["worker"]["environment"]
    assert worker["BQ_EXECUTOR"] == "celery"
    assert worker["BQ_CELERY_BROKER_URL"] == "redis://:test-redis-password@redis:6379/0"


def test_docker_compose_refuses_an_empty_secret_and_names_it(tmp_path: Path):
    env = filled_env(tmp_path, REDIS_PASSWORD="")
    result = docker_compose("--env-file", str(env), "config")
    assert result.returncode != 0
    assert "set REDIS_PASSWORD in deploy/.env" in result.stderr


def test_the_ingestion_api_is_a_service_behind_nginx_with_its_token_only_in_its_own_env(
    tmp_path: Path,
):
    env = filled_env(tmp_path, **URL_VALUES)
    result = docker_compose("--env-file", str(env), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    api = services["api"]["environment"]
    assert api["BQ_API_TOKEN"] == "test-bq-api-token"
    assert api["BQ_API_HOST"] == "0.0.0.0" and api["BQ_API_PORT"] == "8083"
    # The daemon's sensor reads the requests the API wrote: both see the same store.
    assert (
        services["dagster-daemon"]["environment"]["BQ_API_DATABASE_URL"]
        == (api["BQ_API_DATABASE_URL"])
    )
    assert api["BQ_API_DATABASE_URL"].startswith("postgresql://")
    for name, service in services.items():
        if name != "api":
            assert "BQ_API_TOKEN" not in service.get("environment", {}), name
    # The settings the API and the runs read are accepted as the code reads them.
    ApiSettings.from_env(api)
    api_token(api)
    nginx = (DEPLOY_DIR / "nginx" / "default.conf").read_text()
    api_block = nginx.split("location /api/ {", 1)[1].split("\n    }\n", 1)[0]
    assert "proxy_pass http://ingestion_api/;" in api_block
    assert "auth_basic" not in api_block  # the API checks its own bearer token
    assert "server api:8083;" in nginx


def test_the_daily_backup_schedule_is_on_in_the_stack(tmp_path: Path):
    result = docker_compose("--env-file", str(filled_env(tmp_path, **URL_VALUES)), "config")
    assert result.returncode == 0, result.stderr
    daemon = yaml.safe_load(result.stdout)["services"]["dagster-daemon"]["environment"]
    assert daemon["BQ_BACKUP_SCHEDULE_ENABLED"] == "true"
    assert daemon["BQ_PGSTAC_DSN"].startswith("postgresql://")
    settings = Settings.from_env({**daemon, "BQ_LOCAL_DATA_ROOT": str(tmp_path)})
    assert settings.backup_schedule_enabled
    assert settings.backup_retention_days == 30 and settings.backup_keep_last == 7


def test_the_tile_server_runs_in_the_stack_behind_nginx_only(tmp_path: Path):
    result = docker_compose("--env-file", str(filled_env(tmp_path, **URL_VALUES)), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    tiler = services["tiler"]
    assert tiler["command"][:2] == ["uvicorn", "bq_pipelines.runtime.tiler:app"]
    environment = tiler["environment"]
    assert environment["TITILER_PGSTAC_API_ROOT_PATH"] == "/tiler"
    assert environment["TITILER_PGSTAC_API_ENABLE_ASSETS_ENDPOINTS"] == "TRUE"
    assert environment["PGHOST"] == "catalog-db"  # the database stac-api serves
    assert "ports" not in tiler and "tiler" in services["nginx"]["depends_on"]
    # Items and collections link to it as users reach it.
    daemon = services["dagster-daemon"]["environment"]
    assert daemon["BQ_TILER_URL"] == "https://stac.example.org/tiler"
    assert Settings.from_env({**daemon, "BQ_LOCAL_DATA_ROOT": str(tmp_path)}).tiler_url == (
        "https://stac.example.org/tiler"
    )
    nginx = (DEPLOY_DIR / "nginx" / "default.conf").read_text()
    block = nginx.split("location /tiler/ {", 1)[1].split("\n    }\n", 1)[0]
    assert "proxy_pass http://tiler/;" in block and "limit_except GET OPTIONS" in block
    assert "server tiler:8084;" in nginx
    # The project image has the tile server, at the lock's version.
    dockerfile = (DEPLOY_DIR / "Dockerfile").read_text()
    assert "titiler-pgstac[psycopg]" in dockerfile
    lock = (DEPLOY_DIR.parent / "requirements.lock").read_text().splitlines()
    assert "titiler-pgstac==3.2.0" in lock
