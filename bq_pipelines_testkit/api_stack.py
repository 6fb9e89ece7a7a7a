"""The ingestion API as it is run, for the tests and bench/bench_api.py: `python -m
bq_pipelines.ingestion` (uvicorn), and `dagster-daemon` on a code server of its own (`dagster api
grpc`, reached through a `grpc_server` workspace as in deploy/), as subprocesses with one
environment, plus helpers to call the API, wait for a request, read the
Dagster instance, and create a request database in the machine's PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import httpx
import psycopg

import bq_pipelines_testkit.http_client as http
from bq_pipelines.ingestion.code_servers import free_port
from bq_pipelines.ingestion.definitions import REQUEST_TAG
from bq_pipelines.lib.catalog import Publisher, StacApiPublisher
from bq_pipelines.lib.stac import build_collection
from bq_pipelines.lib.waiting import WaitTimeout, wait_until
from bq_pipelines_testkit.dagster_processes import (
    PROJECT_ROOT,
    Deployment,
    write_grpc_workspace,
)
from bq_pipelines_testkit.services import stack_database_prefix

TOKEN = "test-token-for-the-ingestion-api"
CODE_LOCATION_MODULE = "bq_pipelines.definitions"
CODE_LOCATION_NAME = "bq_pipelines"  # as in workspace.yaml
READY_TIMEOUT = 180.0  # see dagster_processes.STARTUP_TIMEOUT
PROCESS_TIMEOUT = 420.0  # runs of 3-7 s each, queued two at a time; minutes on a loaded machine
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def legacy_example(
    collection_id: str, name: str, file_source_host: str, stac_api: str | None
) -> dict[str, Any]:
    """The request of the legacy README ("EXPERIMENTAL stacItem Pipeline API"), its
    placeholders filled in."""
    return {
        "collection_id": collection_id,
        "date": "2018-01-01",
        "name": name,
        "filename": "filename.tif",
        "stac_api_server": stac_api,
        "file_source_host": file_source_host,
        "properties": {
            "full_filename": "full_filename.tif",
            "description": "TTT Other Hansen 2020",
        },
    }


def ensure_collection(publisher: Publisher, collection_id: str) -> None:
    publisher.ensure_collection(
        build_collection(
            collection_id=collection_id,
            title=f"Test collection {collection_id}",
            description="Created by the ingestion API tests",
            license_="CC-BY-4.0",
            items=[],
        )
    )


@contextlib.contextmanager
def temporary_collection(stac_api_url: str, collection_id: str) -> Iterator[StacApiPublisher]:
    """A collection in the STAC API, deleted (with its items) on exit."""
    publisher = StacApiPublisher(stac_api_url)
    ensure_collection(publisher, collection_id)
    try:
        yield publisher
    finally:
        publisher.delete_collection(collection_id)


@contextlib.contextmanager
def on_services(
    services_env: Mapping[str, str], home: Path, allowed_sources: str, store: str = "postgresql"
) -> Iterator[dict[str, str]]:
    """BQ_* settings of an API stack on the real services, with a bucket and a request database
    (PostgreSQL, or SQLite under `home`) of its own, deleted on exit."""
    bucket = f"bq-api-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=services_env["BQ_S3_ENDPOINT_URL"],
        region_name=services_env["BQ_S3_REGION"],
        aws_access_key_id=services_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=services_env["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=bucket)
    try:
        with request_database() as postgres_url:
            yield {
                **{k: v for k, v in services_env.items() if k.startswith(("BQ_", "AWS_"))},
                "BQ_HOME": str(home),
                "BQ_S3_BUCKET": bucket,
                "BQ_PUBLIC_BASE_URL": f"{services_env['BQ_S3_ENDPOINT_URL']}/{bucket}",
                "BQ_API_DATABASE_URL": postgres_url
                if store == "postgresql"
                else f"sqlite:///{home / 'requests.sqlite'}",
                "BQ_API_ALLOWED_SOURCES": allowed_sources,
            }
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def request_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the request store (named after this checkout's test
    stack, so checkouts sharing the server stay apart); dropped afterwards."""
    name = f"{stack_database_prefix()}requests_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def process_env(bq: Mapping[str, str], dagster_home: Path, short_tmp: Path) -> dict[str, str]:
    """The subprocesses' environment: ours without BQ_*/DAGSTER_* variables, then `bq`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("BQ_", "DAGSTER_"))}
    return {
        **inherited,
        "BQ_API_TOKEN": TOKEN,
        **bq,
        "DAGSTER_HOME": str(dagster_home),
        # Code servers listen on sockets under TMPDIR: keep the path short (108-byte limit).
        "TMPDIR": str(short_tmp),
    }


@dataclass
class ApiStack:
    """The API server and (when started) the daemon, with their shared environment."""

    deployment: Deployment
    port: int
    dagster_home: Path
    api: Any = None  # subprocess.Popen of the API
    daemon: Any = None  # subprocess.Popen of dagster-daemon
    code_server: Any = None  # subprocess.Popen of the daemon's code server
    # Every code server started: each leads a process group holding the run workers it
    # launched, which outlive it when it alone is killed.
    code_servers: list[Any] = field(default_factory=list)
    code_server_port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.api = self.deployment.start(
            "python", "-m", "bq_pipelines.ingestion", *args, log_name="api", env=env
        )
        self.wait_until_serving()

    def wait_until_serving(self) -> None:
        def serving() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return http.get(f"{self.base_url}/openapi.json", timeout=2).status_code == 200
            return False

        def exited() -> str | None:
            return None if self.api.poll() is None else f"exited with {self.api.returncode}"

        try:
            wait_until(serving, timeout=READY_TIMEOUT, what="the API serving", failed=exited)
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n{self.deployment.log_tail()}") from None

    def start_code_server(self) -> None:
        self.code_server = self.deployment.start_code_server(
            CODE_LOCATION_MODULE, self.code_server_port
        )
        self.code_servers.append(self.code_server)

    def start_daemon(self) -> None:
        """The daemon, and its code server first unless one is running."""
        if self.code_server is None or self.code_server.poll() is not None:
            self.start_code_server()
        workspace = write_grpc_workspace(
            self.dagster_home / "workspace.yaml", self.code_server_port, CODE_LOCATION_NAME
        )
        self.deployment.workspace = workspace  # a webserver started later shares the server
        self.daemon = self.deployment.start(
            "dagster-daemon", "run", "-w", str(workspace), log_name="daemon"
        )

    def post(self, body: Any, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return http.post(
            f"{self.base_url}/newitem", json=body, headers={**AUTH, **(headers or {})}, timeout=30
        )

    def accepted(self, body: Any, headers: Mapping[str, str] | None = None) -> str:
        response = self.post(body, headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["msg"] == "received" and set(answer) == {"id", "msg"}, answer
        return str(answer["id"])

    def status(self, request_id: str) -> dict[str, Any]:
        response = http.get(
            f"{self.base_url}/status", params={"id": request_id}, headers=AUTH, timeout=30
        )
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    def wait_done(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each request's status once finished or failed (the daemon processes them)."""
        done: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:
            for request_id in request_ids:
                if request_id not in done:
                    status = self.status(request_id)
                    if status["_state"] in ("finished", "failed"):
                        done[request_id] = status
            return len(done) == len(request_ids)

        def pending() -> str:
            still = [self.status(i) for i in request_ids if i not in done]
            return f"still waiting: {still}\n{self.deployment.log_tail()}"

        what = f"requests {request_ids} finished or failed"
        wait_until(all_done, timeout=PROCESS_TIMEOUT, what=what, poll=1, detail=pending)
        return done

    @contextlib.contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        try:
            yield instance
        finally:
            instance.dispose()

    def runs_of(self, request_id: str) -> list[dg.DagsterRun]:
        """Every Dagster run of a request (each attempt's, re-executions), oldest first, once
        none is still in progress (a request's status is recorded before its run ends)."""
        runs: list[dg.DagsterRun] = []
        with self.instance() as instance:

            def none_in_progress() -> bool:
                runs[:] = instance.get_runs(
                    filters=dg.RunsFilter(tags={REQUEST_TAG: request_id}), ascending=True
                )
                return all(run.is_finished for run in runs)

            wait_until(
                none_in_progress,
                timeout=PROCESS_TIMEOUT,
                what=f"the runs of request {request_id} ending",
                poll=0.5,
                detail=lambda: f"runs still in progress: {runs}",
            )
        return runs


@contextlib.contextmanager
def api_stack(tmp_path: Path, bq: Mapping[str, str]) -> Iterator[ApiStack]:
    """An ApiStack on a fresh DAGSTER_HOME (the project's dagster.yaml) and a free port; nothing
    is started yet. Everything it started is stopped on exit."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    # Created here, once: the API and the daemon starting together on an empty DAGSTER_HOME can
    # both stamp a new SQLite storage's alembic version, and the next process to open it then
    # refuses it ("more than one head"), as a restarted daemon once did in this suite.
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    short_tmp = Path(tempfile.mkdtemp(prefix="bqapi-"))
    port = free_port()
    env = process_env({**bq, "BQ_API_PORT": str(port)}, dagster_home, short_tmp)
    deployment = Deployment(env=env, workspace=PROJECT_ROOT / "workspace.yaml", logs=logs)
    try:
        yield ApiStack(deployment=deployment, port=port, dagster_home=dagster_home)
    finally:
        deployment.stop()
        shutil.rmtree(short_tmp, ignore_errors=True)
