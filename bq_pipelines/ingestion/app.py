"""The ingestion API's HTTP service (FastAPI): the legacy endpoints, closed to strangers.

`POST /newitem` checks the token, the body (422 naming the field), `stac_api_server` (400), the
collection (404), the source URL against the operator's allowlist (a HEAD request follows every
redirect hop under the same policy: 422), then stores the request and answers its id. Nothing is
processed here: a Dagster sensor picks stored requests up (bq_pipelines/ingestion/definitions.py).

Run it with `python -m bq_pipelines.ingestion` (or `make api`), or under any ASGI server:
`uvicorn bq_pipelines.ingestion.app:create_app --factory`.

POST /newitem runs in the event loop end to end (the HEAD on httpx's async client pinned by the
source policy, the INSERT on psycopg's async pool): no request waits for a thread, which cost
the API more CPU than its own work (bench/NOTES.md, "Ingestion API").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio.to_thread
import dagster as dg
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bq_pipelines.ingestion.async_store import AsyncRequestStore
from bq_pipelines.ingestion.models import MAX_INT, Accepted, NewItem, Status, json_problem
from bq_pipelines.ingestion.store import IdempotencyKeyReused, RequestStore
from bq_pipelines.lib import sources
from bq_pipelines.lib.catalog import Publisher
from bq_pipelines.lib.errors import PipelineError, SourceError, SourceRefused
from bq_pipelines.lib.garbage_collection import freeze_long_lived_objects
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.url_policy import DEFAULT_PORTS, SourcePolicy
from bq_pipelines.orchestration.resources import catalog_for
from bq_pipelines.settings import ApiSettings, Settings, api_token

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 10.0
COLLECTION_CACHE_SECONDS = 60.0
DAEMON_HEARTBEAT_MAX_AGE_SECONDS = 120.0
DEFAULT_PAGE, MAX_PAGE = 100, 1000
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"  # printable ASCII, no spaces
# lib/sources names an HTTP failure "HTTP <status> <reason>".
HTTP_STATUS = re.compile(r"^HTTP (\d{3})\b")
CLOSED_STATUSES = (401, 403)


def field_error(
    field: str | tuple[str | int, ...], message: str, kind: str = "value_error", where: str = "body"
) -> RequestValidationError:
    """A 422 naming a field (or a path into one), shaped like FastAPI's own validation errors."""
    path = (field,) if isinstance(field, str) else field
    return RequestValidationError([{"type": kind, "loc": (where, *path), "msg": message}])


def source_is_missing(error: SourceError) -> bool:
    """A source that says it is not there (404, 410, FTP 550) or not ours to read (401, 403):
    asking again later will not change the answer."""
    status = HTTP_STATUS.match(error.reason)
    return error.not_found or (status is not None and int(status[1]) in CLOSED_STATUSES)


def _same_url(a: str, b: str) -> bool:
    """Equal up to case of scheme and host, a default port and a trailing slash."""

    def normal(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        try:
            port = parts.port or DEFAULT_PORTS.get(scheme)
        except ValueError:
            port = -1
        return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")

    return normal(a) == normal(b)


class BodySizeLimit:
    """413 for a request body over `max_bytes`, announced or streamed (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413, f"request body larger than {self.max_bytes} bytes (BQ_API_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = dict(scope["headers"]).get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.max_bytes:
            response = JSONResponse({"detail": self._too_large().detail}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes an HTTPException raised while reading the body through.
                raise self._too_large()
            return message

        await self.app(scope, limited, send)


class IngestionService:
    """What the endpoints share: settings, the request store, the catalog, the source policy."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.settings = Settings.from_env(env)
        self.api = ApiSettings.from_env(env)
        self._token = api_token(env).encode()
        self.store = RequestStore(self.api.database_url)
        self.async_store = AsyncRequestStore(self.store, self.api.database_url)
        catalog = catalog_for(self.settings)
        # Resolves EnvVar fields (the STAC API token) as a Dagster run would.
        self.publisher: Publisher = catalog.process_config_and_initialize().publisher()
        self.policy = SourcePolicy(self.api.allowed_sources)
        # One client for every probe, pinned by the policy: the allowed hosts are few, and a
        # kept-alive connection saves each HEAD a TCP (and TLS) handshake.
        self.probes = sources.AsyncHttpSession(self.policy)
        self._collections_seen: dict[str, float] = {}
        self._instance: dg.DagsterInstance | None = None
        self._instance_lock = threading.Lock()

    async def close(self) -> None:
        await self.async_store.close()
        await self.probes.aclose()
        self.store.close()
        if self._instance is not None:
            self._instance.dispose()

    # ------------------------------------------------------------------ checks

    def token_matches(self, token: str) -> bool:
        return secrets.compare_digest(token.encode(), self._token)

    def check_stac_api_server(self, value: str | None) -> None:
        if value is None:
            return
        accepted = [*self.api.stac_api_aliases]
        if self.settings.catalog == "stac-api" and self.settings.stac_api_url:
            accepted.insert(0, self.settings.stac_api_url)
        if any(_same_url(value, url) for url in accepted):
            return
        where = redact_url(accepted[0]) if accepted else "its own static catalog"
        raise HTTPException(
            400,
            f"stac_api_server: {value!r} is not this service's catalog; items are published "
            f"to {where} only (omit the field or send that URL)",
        )

    async def check_collection(self, collection_id: str) -> None:
        seen = self._collections_seen.get(collection_id)
        if seen is not None and time.monotonic() - seen < COLLECTION_CACHE_SECONDS:
            return
        try:
            found = await anyio.to_thread.run_sync(self.publisher.get_collection, collection_id)
        except PipelineError as error:
            logger.error("catalog unavailable: %s", error)
            raise HTTPException(503, "the catalog cannot be read now; retry later") from None
        if found is None:
            raise HTTPException(
                404, f"collection_id: collection {collection_id!r} does not exist in the catalog"
            )
        self._collections_seen[collection_id] = time.monotonic()

    async def check_source(self, url: str) -> None:
        """The allowlist, then a HEAD that follows redirects hop by hop under the same policy.
        A source that answers it is missing or closed (404, 410, 401, 403) is refused; one that
        does not answer now (timeout, 5xx) is accepted: its run retries, and reports why."""
        limits = sources.FetchLimits(guard=self.policy, max_seconds=PROBE_TIMEOUT_SECONDS)
        try:
            found = await sources.probe_async(
                url, timeout=PROBE_TIMEOUT_SECONDS, limits=limits, http=self.probes
            )
        except SourceRefused as error:
            raise field_error("file_source_host", f"{error}", "source_refused") from None
        except SourceError as error:
            if source_is_missing(error):
                raise field_error(
                    "file_source_host",
                    f"{error} (the file must be there, and readable, when it is sent)",
                    "source_missing",
                ) from None
            logger.warning("accepting a request whose source does not answer yet: %s", error)
            return
        if found.size is not None and found.size > self.api.max_download_bytes:
            raise field_error(
                "file_source_host",
                f"{found.url} is {found.size} bytes, more than the download limit of "
                f"{self.api.max_download_bytes} bytes (BQ_API_MAX_DOWNLOAD_BYTES)",
                "source_refused",
            )

    # ------------------------------------------------------------------ health

    def instance(self) -> dg.DagsterInstance:
        with self._instance_lock:
            if self._instance is None:
                self._instance = dg.DagsterInstance.get()
            return self._instance

    def health(self) -> dict[str, Any]:
        checks = {
            "database": self._check(self._database_health),
            "catalog": self._check(self._catalog_health),
            "dagster": self._check(self._dagster_health),
        }
        healthy = all(check["ok"] for check in checks.values())
        return {"status": "ok" if healthy else "degraded", **checks}

    @staticmethod
    def _check(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return {"ok": True, **probe()}
        except Exception as error:
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}

    def _database_health(self) -> dict[str, Any]:
        return {
            "kind": self.store.engine.dialect.name,
            "requests": self.store.counts_by_state(),
        }

    def _catalog_health(self) -> dict[str, Any]:
        self.publisher.get_collection("health-check-probe")  # raises if unreachable
        return {"kind": self.settings.catalog}

    def _dagster_health(self) -> dict[str, Any]:
        if not os.environ.get("DAGSTER_HOME"):
            raise RuntimeError("DAGSTER_HOME is not set: the API cannot see Dagster")
        instance = self.instance()
        queued = instance.get_runs_count(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])
        )
        heartbeats = instance.get_daemon_heartbeats()
        sensor = heartbeats.get("SENSOR")
        age = None if sensor is None else time.time() - sensor.timestamp
        if age is None or age > DAEMON_HEARTBEAT_MAX_AGE_SECONDS:
            raise RuntimeError(
                "no recent dagster-daemon heartbeat: accepted requests wait until one runs "
                f"(queued runs: {queued})"
            )
        return {"daemon_heartbeat_age_seconds": round(age, 1), "queued_runs": queued}


bearer = HTTPBearer(auto_error=False, description="BQ_API_TOKEN")


def _lifespan(service: IngestionService) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The process holds ~260,000 objects from its imports (Dagster, pydantic, SQLAlchemy):
        # each full collection walked them all, ~160 ms with every request waiting, the p99 of
        # POST /newitem (bench/RESULTS.md). Frozen, collections see only what requests create.
        freeze_long_lived_objects(collect_first=True)
        yield
        await service.close()

    return lifespan


def _encodable(part: Any) -> Any:
    """A path part the answer can carry: a key holding a lone surrogate (refused for that) as
    its escape, since the answer is UTF-8 and could not be encoded (a 500 instead of the 422)."""
    if isinstance(part, str):
        return part.encode("utf-8", "backslashreplace").decode("utf-8")
    return part


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with each field's path and reason, and one line naming them all."""
    details = [
        {"loc": [_encodable(part) for part in e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in error.errors()
    ]
    for detail in details:
        if detail["loc"] == ["body"]:
            detail["msg"] += " (send a JSON object, Content-Type: application/json)"
    summary = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0]}: {d['msg']}" for d in details
    )
    return JSONResponse({"detail": details, "msg": summary}, status_code=422)


async def accept(service: IngestionService, body: NewItem, idempotency_key: str | None) -> Accepted:
    """Store a request (or find the one an Idempotency-Key already stored) and answer its id."""
    stored = body.stored()
    problem = json_problem(stored)
    if problem is not None:
        raise field_error(*problem)
    try:
        if idempotency_key is not None:
            first = await service.async_store.repeated(idempotency_key, stored)
            if first is not None:
                return Accepted(id=first)
        service.check_stac_api_server(body.stac_api_server)
        await service.check_collection(body.collection_id)
        await service.check_source(body.source_url)
        request_id, new = await service.async_store.add(
            stored,
            collection_id=body.collection_id,
            item_id=body.name,
            idempotency_key=idempotency_key,
        )
    except IdempotencyKeyReused as error:
        raise field_error(
            "idempotency-key", str(error), "idempotency_key_reused", "header"
        ) from None
    if new:
        logger.info(
            "accepted %s: %s/%s from %s",
            request_id,
            body.collection_id,
            body.name,
            redact_url(body.source_url),
        )
    return Accepted(id=request_id)


def status_page(service: IngestionService, limit: int, offset: int) -> JSONResponse:
    """Requests newest first, with X-Total-Count and a Link to the next page if any."""
    page = service.store.page(limit, offset)
    total = service.store.count()
    headers = {"X-Total-Count": str(total)}
    if offset + len(page) < total:
        headers["Link"] = f'</status/all?limit={limit}&offset={offset + limit}>; rel="next"'
    return JSONResponse(
        [r.legacy_status(service.api.dagster_ui_url) for r in page], headers=headers
    )


def _access(
    service: IngestionService,
) -> tuple[Callable[..., Awaitable[None]], Callable[..., Awaitable[None]]]:
    """The token check of POST, and of GET unless the status is public. Coroutines: they do no
    I/O, and FastAPI runs a plain function dependency in its thread pool (a hop per request)."""

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None or not service.token_matches(credentials.credentials):
            raise HTTPException(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def read_access(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if not service.api.public_status:
            await require_token(credentials)

    return require_token, read_access


def create_app(env: Mapping[str, str] | None = None) -> FastAPI:
    """The application; settings from `env` (default: the process environment)."""
    service = IngestionService(os.environ if env is None else env)
    app = FastAPI(
        title="bq-pipelines ingestion API",
        version="2",
        description=(
            "The legacy stacItem pipeline API: POST /newitem stores a request; a Dagster run "
            "fetches the raster, converts it to a validated COG, stores it and publishes the "
            "STAC item; GET /status reports the legacy step names. POST needs "
            "`Authorization: Bearer <token>`."
        ),
        lifespan=_lifespan(service),
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=service.api.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    require_token, read_access = _access(service)

    @app.post(
        "/newitem",
        response_model=Accepted,
        dependencies=[Depends(require_token)],
        responses={400: {}, 401: {}, 404: {}, 413: {}, 422: {}},
    )
    async def new_item(
        body: NewItem,
        idempotency_key: Annotated[
            str | None, Header(pattern=IDEMPOTENCY_KEY, description="repeat-safe retries")
        ] = None,
    ) -> Accepted:
        """Store a request to publish one raster as a STAC item; answers its id at once."""
        return await accept(service, body, idempotency_key)

    @app.get(
        "/status",
        response_model=Status,
        dependencies=[Depends(read_access)],
        responses={401: {}, 404: {}},
    )
    def status(id: Annotated[uuid.UUID, Query(description="the id /newitem answered")]) -> Any:
        """Where a request is: `_operation` (legacy step), `_status` ok/error, `_description`."""
        found = service.store.get(str(id))
        if found is None:
            raise HTTPException(404, f"id: no request {id}")
        return JSONResponse(found.legacy_status(service.api.dagster_ui_url))

    @app.get(
        "/status/all",
        response_model=list[Status],
        dependencies=[Depends(read_access)],
        responses={401: {}},
    )
    def status_all(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        # What a SQL OFFSET can hold (SQLite and PostgreSQL: a signed 64-bit integer).
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> Any:
        """Every request, newest first, `limit` at a time (X-Total-Count says how many)."""
        return status_page(service, limit, offset)

    @app.get("/health")
    def health() -> JSONResponse:
        """The database, the catalog and Dagster (a fresh daemon heartbeat): 200 or 503."""
        report = service.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    return app
