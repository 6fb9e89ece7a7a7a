"""The servers on the catalog's database: stac-fastapi-pgstac and the tile server
(titiler-pgstac), how to start each and whether it answers."""

from __future__ import annotations

import json
import urllib.request

from local_stack.stacks import (
    HOST,
    PG_PASSWORD_PLACEHOLDER,
    PG_PORT,
    PG_USER,
    Service,
    Stack,
    child_env,
    local_url,
    venv_executable,
)


def pg_env(stack: Stack) -> dict[str, str]:
    # stac-fastapi-pgstac 7.2 and titiler-pgstac 3.2 read their database from these PG*
    # variables (PostgresSettings, pydantic-settings, case-insensitive), all five required.
    return {
        "PGHOST": HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": PG_USER,
        "PGPASSWORD": PG_PASSWORD_PLACEHOLDER,
        "PGDATABASE": stack.database,
    }


def uvicorn_argv(app: str, port: int, *options: str) -> list[str]:
    return [venv_executable("uvicorn"), app, *options, "--host", HOST, "--port", str(port)]


def stac_service(stack: Stack, port: int) -> Service:
    env = {**pg_env(stack), "ENABLE_TRANSACTIONS_EXTENSIONS": "true"}
    argv = uvicorn_argv("stac_fastapi.pgstac.app:create_app", port, "--factory")
    return Service("stac-api", port, argv, child_env(env), stac_api_answers, stack)


def tiler_service(stack: Stack, port: int) -> Service:
    # titiler-pgstac reads the COGs at their item hrefs (http(s) here: the public base URL).
    env = {
        **pg_env(stack),
        # A re-published item shows at once (its 5-minute cache is for production traffic).
        "TITILER_PGSTAC_CACHE_DISABLE": "TRUE",
        # Maps of one COG as a COG (its colour table included): the links of lib/tiles.
        "TITILER_PGSTAC_API_ENABLE_ASSETS_ENDPOINTS": "TRUE",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    # titiler-pgstac's app, its mosaics reading our id-keyed COG assets.
    argv = uvicorn_argv("bq_pipelines.runtime.tiler:app", port)
    return Service("tiler", port, argv, child_env(env), tiler_answers, stack)


def json_answer(url: str) -> object:
    """The JSON body of a 200 answer to GET `url`, or None."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def stac_api_answers(port: int) -> bool:
    """True when GET / is a STAC landing page (not merely something on the port)."""
    body = json_answer(f"{local_url(port)}/")
    return isinstance(body, dict) and "stac_version" in body and "links" in body


def tiler_answers(port: int) -> bool:
    """True when titiler-pgstac's /healthz says its database is online."""
    body = json_answer(f"{local_url(port)}/healthz")
    return isinstance(body, dict) and body.get("database_online") is True
