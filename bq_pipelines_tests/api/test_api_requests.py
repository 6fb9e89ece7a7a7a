"""The ingestion API server (uvicorn subprocess) answering requests: the legacy answers, and a 4xx
naming the problem for every bad request, after which it keeps serving.

No daemon runs here: requests are stored, not processed (see test_api_processing.py). The
catalog is a static one with one collection; the request store SQLite; the sources a local HTTP
mirror explicitly allowlisted under /allowed/, besides `https://` and `http://` for any public
host, so internal targets are refused by their address, not merely for being unlisted.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bq_pipelines_testkit.http_client as http
from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines_testkit.api_stack import AUTH, TOKEN, ApiStack, api_stack, ensure_collection
from bq_pipelines_testkit.http_host import LocalHttpHost, serving

COLLECTION = "api-known-collection"
MAX_BODY = 8192
MAX_DOWNLOAD = 100_000
STAC_API = "http://stac.example.org/api"  # what legacy clients send, accepted as an alias


@dataclass
class Context:
    stack: ApiStack
    mirror: LocalHttpHost
    other: LocalHttpHost  # a second local server no request may reach

    @property
    def allowed(self) -> str:
        return self.mirror.url("allowed")

    @property
    def mirror_port(self) -> int:
        return int(self.mirror.base_url.rsplit(":", 1)[1])

    def body(self, **changes: Any) -> dict[str, Any]:
        body = {
            "collection_id": COLLECTION,
            "date": "2018-01-01",
            "name": f"item-{uuid.uuid4().hex[:8]}",
            "filename": "x.tif",
            "stac_api_server": STAC_API,
            "file_source_host": self.allowed,
            "properties": {"full_filename": "x.tif", "description": "a test item"},
        }
        body.update(changes)
        return {k: v for k, v in body.items() if v is not DROP}


DROP = object()
# Sources that exist on the mirror but answer these statuses (a missing one answers 404).
CLOSED_SOURCES = {"gone.tif": 410, "needs-login.tif": 401, "forbidden.tif": 403}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    tmp_path = tmp_path_factory.mktemp("api_requests")
    home = tmp_path / "bq"
    ensure_collection(StaticCatalogPublisher(home / "catalog"), COLLECTION)
    with serving(tmp_path / "mirror") as mirror, serving(tmp_path / "other") as other:
        mirror.put("allowed/x.tif", b"II*\x00" + bytes(1000))
        mirror.put("allowed/big.tif", bytes(MAX_DOWNLOAD + 1))
        mirror.put("secret/x.tif", b"secret")
        for name, status in CLOSED_SOURCES.items():
            mirror.put(f"allowed/{name}", b"II*\x00" + bytes(1000))
            mirror.fail(f"allowed/{name}", status=status, times=None)
        other.put("x.tif", b"secret")
        port = mirror.base_url.rsplit(":", 1)[1]
        redirects = {
            "to-metadata.tif": "http://169.254.169.254/latest/meta-data/iam/",
            "to-other-port.tif": other.url("x.tif"),
            "to-localhost.tif": f"http://localhost:{port}/allowed/x.tif",
            "to-outside.tif": "/secret/x.tif",
            "to-file.tif": "file:///etc/passwd",
            "to-ipv6-loopback.tif": f"http://[::1]:{port}/allowed/x.tif",
        }
        for name, location in redirects.items():
            mirror.fail(f"allowed/{name}", status=302, times=None, headers={"Location": location})
        bq = {
            "BQ_HOME": str(home),
            "BQ_API_ALLOWED_SOURCES": f"{mirror.base_url}/allowed/,https://,http://",
            "BQ_API_STAC_API_ALIASES": STAC_API,
            "BQ_API_MAX_BODY_BYTES": str(MAX_BODY),
            "BQ_API_MAX_DOWNLOAD_BYTES": str(MAX_DOWNLOAD),
        }
        with api_stack(tmp_path, bq) as stack:
            stack.start_api()
            yield Context(stack, mirror, other)


# ------------------------------------------------------------------ what legacy clients get


def test_a_legacy_request_is_received_and_its_status_echoes_it(context: Context):
    body = context.body()
    request_id = context.stack.accepted(body)

    status = context.stack.status(request_id)
    assert status["_id"] == request_id
    assert status["_operation"] == "RECEIVED"
    assert status["_status"] == "ok"
    assert status["_state"] == "accepted"
    assert "waiting for a Dagster run" in status["_description"]
    expected = {**body, "properties": {**body["properties"], "datetime": "2018-01-01T00:00:00Z"}}
    assert status["_param"] == expected
    # Legacy fields first, then the additions.
    assert list(status)[:5] == ["_id", "_operation", "_status", "_description", "_param"]


def test_the_idempotency_key_returns_the_first_requests_id(context: Context):
    key = f"client-retry-{uuid.uuid4()}"
    body = context.body()
    first = context.stack.accepted(body, {"Idempotency-Key": key})
    # The same body, its keys in another order: the same request.
    again = context.stack.accepted(dict(reversed(body.items())), {"Idempotency-Key": key})
    other = context.stack.accepted(body, {"Idempotency-Key": key + "-2"})
    assert again == first and other != first


def test_an_idempotency_key_reused_with_another_body_is_refused(context: Context):
    key = f"client-retry-{uuid.uuid4()}"
    body = context.body()
    first = context.stack.accepted(body, {"Idempotency-Key": key})

    refused = context.stack.post({**body, "name": "another"}, {"Idempotency-Key": key})

    assert refused.status_code == 422, refused.text
    [detail] = refused.json()["detail"]
    assert detail["loc"] == ["header", "idempotency-key"]
    assert first in detail["msg"] and "another body" in detail["msg"]
    assert context.stack.status(first)["_param"]["name"] == body["name"]
    assert context.stack.accepted(body, {"Idempotency-Key": key}) == first


def test_status_all_takes_the_largest_offset_a_store_holds(context: Context):
    answer = http.get(
        f"{context.stack.base_url}/status/all", params={"offset": 2**63 - 1}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == []


def test_a_refused_source_is_named_with_its_status(context: Context):
    response = context.stack.post(context.body(filename="forbidden.tif"))
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body", "file_source_host"]
    assert "HTTP 403" in detail["msg"] and "forbidden.tif" in detail["msg"]


def test_status_all_is_a_list_newest_first_paginated(context: Context):
    ids = [context.stack.accepted(context.body()) for _ in range(3)]
    url = f"{context.stack.base_url}/status/all"

    default = http.get(url, headers=AUTH)
    assert default.status_code == 200
    assert isinstance(default.json(), list)
    total = int(default.headers["X-Total-Count"])
    assert total >= 3

    newest = http.get(url, params={"limit": 2}, headers=AUTH)
    assert [s["_id"] for s in newest.json()] == ids[::-1][:2]
    assert newest.headers["Link"] == '</status/all?limit=2&offset=2>; rel="next"'
    following = http.get(url, params={"limit": 2, "offset": 2}, headers=AUTH)
    assert following.json()[0]["_id"] == ids[0]
    last = http.get(url, params={"limit": 2, "offset": total - 1}, headers=AUTH)
    assert len(last.json()) == 1 and "Link" not in last.headers


def test_docs_and_health(context: Context):
    assert http.get(f"{context.stack.base_url}/docs").status_code == 200
    paths = http.get(f"{context.stack.base_url}/openapi.json").json()["paths"]
    assert {"/newitem", "/status", "/status/all", "/health"} <= set(paths)

    health = http.get(f"{context.stack.base_url}/health", timeout=30)
    report = health.json()
    # No daemon runs in this module: Dagster is reported down, the rest up.
    assert health.status_code == 503 and report["status"] == "degraded"
    assert report["database"]["ok"] and report["database"]["kind"] == "sqlite"
    assert report["database"]["requests"]["accepted"] >= 1
    assert report["catalog"] == {"ok": True, "kind": "static"}
    assert not report["dagster"]["ok"] and "dagster-daemon" in report["dagster"]["error"]


# ------------------------------------------------------------------ bad requests


@dataclass
class Bad:
    """A bad request: how to send it, the 4xx expected, a text the answer must contain."""

    status: int
    expect: str
    body: Callable[[Context], Any] | None = None
    method: str = "POST"
    path: str = "/newitem"
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    params: dict[str, Any] | None = None
    content: Callable[[Context], Any] | None = None


def host(template: str) -> Callable[[Context], Any]:
    """A body whose file_source_host is `template` with {port} (the mirror's) and {other}."""

    def build(ctx: Context) -> Any:
        other = int(ctx.other.base_url.rsplit(":", 1)[1])
        url = template.format(port=ctx.mirror_port, other=other)
        return ctx.body(file_source_host=url)

    return build


def field_of(name: str, value: Any) -> Callable[[Context], Any]:
    return lambda ctx: ctx.body(**{name: value})


def raw_property(literal: str) -> Callable[[Context], bytes]:
    """A body whose `properties.value` is `literal` as written (NaN, 1e999: not JSON, but
    Python's parser reads them)."""

    def build(ctx: Context) -> bytes:
        text = json.dumps(ctx.body(properties={"value": "@@"}), ensure_ascii=True)
        return text.replace('"@@"', literal).encode()

    return build


JSON = {**AUTH, "Content-Type": "application/json"}


def chunks(ctx: Context) -> Iterator[bytes]:
    yield b'{"collection_id": "' + b"a" * MAX_BODY
    yield b'"}'


BAD_REQUESTS = {
    # the token
    "no token": Bad(401, "bearer token", lambda c: c.body(), headers={}),
    "wrong token": Bad(
        401, "bearer token", lambda c: c.body(), headers={"Authorization": "Bearer nope"}
    ),
    "token with a suffix": Bad(
        401, "bearer token", lambda c: c.body(), headers={"Authorization": f"Bearer {TOKEN}x"}
    ),
    "basic auth": Bad(
        401, "bearer token", lambda c: c.body(), headers={"Authorization": f"Basic {TOKEN}"}
    ),
    "token as a query parameter": Bad(
        401, "bearer token", lambda c: c.body(), headers={}, params={"token": TOKEN}
    ),
    # missing and mistyped fields
    "missing collection_id": Bad(422, "collection_id", field_of("collection_id", DROP)),
    "missing date": Bad(422, "date", field_of("date", DROP)),
    "missing name": Bad(422, "name", field_of("name", DROP)),
    "missing filename": Bad(422, "filename", field_of("filename", DROP)),
    "missing file_source_host": Bad(422, "file_source_host", field_of("file_source_host", DROP)),
    "collection_id a number": Bad(422, "collection_id", field_of("collection_id", 42)),
    "collection_id with a slash": Bad(422, "collection_id", field_of("collection_id", "a/b")),
    "date not ISO": Bad(422, "date", field_of("date", "01/02/2018")),
    "date out of range": Bad(422, "date", field_of("date", "2018-13-01")),
    "date a number": Bad(422, "date", field_of("date", 20180101)),
    "date at the calendar's start, east of UTC": Bad(
        422, "date", field_of("date", "0001-01-01T00:00:00+14:00")
    ),
    "date at the calendar's end, west of UTC": Bad(
        422, "date", field_of("date", "9999-12-31T23:59:59-14:00")
    ),
    # values the request store or the catalog could not hold
    "integer over 64 bits in properties": Bad(
        422, "properties.n", field_of("properties", {"n": 2**63})
    ),
    "integer under 64 bits in an unknown field": Bad(422, "extra", field_of("extra", -(2**63) - 1)),
    "integer over 64 bits deep in a list": Bad(
        422, "properties.a.0.b.1", field_of("properties", {"a": [{"b": [1, 10**40]}]})
    ),
    "NaN in properties": Bad(422, "properties.value", content=raw_property("NaN"), headers=JSON),
    "Infinity in properties": Bad(
        422, "properties.value", content=raw_property("Infinity"), headers=JSON
    ),
    "a float overflowing to infinity": Bad(
        422, "properties.value", content=raw_property("-1e999"), headers=JSON
    ),
    "NUL in a property": Bad(
        422, "properties.value", content=raw_property('"a\\u0000b"'), headers=JSON
    ),
    "lone surrogate in a property": Bad(
        422, "properties.value", content=raw_property('"\\ud800"'), headers=JSON
    ),
    "name empty": Bad(422, "name", field_of("name", "")),
    "name with spaces": Bad(422, "name", field_of("name", "my item")),
    "properties a list": Bad(422, "properties", field_of("properties", ["a"])),
    "properties a string": Bad(422, "properties", field_of("properties", "x")),
    "stac_api_server a number": Bad(422, "stac_api_server", field_of("stac_api_server", 1)),
    "body a list": Bad(422, "body", lambda c: [c.body()]),
    "body not JSON": Bad(422, "JSON", content=lambda c: b"collection_id=x&date=2018"),
    "idempotency key with spaces": Bad(
        422, "idempotency-key", lambda c: c.body(), headers={**AUTH, "Idempotency-Key": "a b"}
    ),
    # the file name: a plain name only
    "filename traversal": Bad(422, "filename", field_of("filename", "../../etc/passwd")),
    "filename with a slash": Bad(422, "filename", field_of("filename", "sub/x.tif")),
    "filename with a backslash": Bad(422, "filename", field_of("filename", "..\\x.tif")),
    "filename with NUL": Bad(422, "filename", field_of("filename", "x\x00.tif")),
    "filename dot-dot": Bad(422, "filename", field_of("filename", "..")),
    "filename hidden": Bad(422, "filename", field_of("filename", ".htaccess")),
    # where to publish, what to publish into
    "another STAC server": Bad(
        400, "not this service's catalog", field_of("stac_api_server", "http://evil.example/")
    ),
    "unknown collection": Bad(
        404, "does not exist in the catalog", field_of("collection_id", "no-such-collection")
    ),
    # SSRF: internal targets, in many spellings
    "metadata address": Bad(422, "link-local", host("http://169.254.169.254/latest/meta-data")),
    "loopback, another port": Bad(422, "loopback", host("http://127.0.0.1:{other}/")),
    "localhost by name": Bad(422, "loopback", host("http://localhost:{port}/allowed")),
    "IPv6 loopback": Bad(422, "loopback", host("http://[::1]:{port}/allowed")),
    "IPv4-mapped IPv6 loopback": Bad(422, "loopback", host("http://[::ffff:127.0.0.1]:{port}/")),
    "loopback as a number": Bad(422, "loopback", host("http://2130706433:{port}/allowed")),
    "unspecified address": Bad(422, "unspecified", host("http://0.0.0.0:{port}/allowed")),
    "private 10/8": Bad(422, "private", host("http://10.0.0.1/data")),
    "private 172.16/12": Bad(422, "private", host("https://172.16.0.1/data")),
    "private 192.168/16": Bad(422, "private", host("http://192.168.0.1/data")),
    "IPv6 link-local": Bad(422, "link-local", host("http://[fe80::1]/data")),
    "IPv6 unique local": Bad(422, "private", host("http://[fd00:ec2::254]/data")),
    "file scheme": Bad(422, "scheme 'file'", host("file:///etc")),
    "ftp to loopback": Bad(422, "file_source_host", host("ftp://127.0.0.1/pub")),
    "gopher": Bad(422, "scheme 'gopher'", host("gopher://127.0.0.1:70/")),
    "credentials in the URL": Bad(422, "credentials", host("http://u:p@127.0.0.1:{port}/allowed")),
    "traversal out of the prefix": Bad(422, "'..'", host("http://127.0.0.1:{port}/allowed/..")),
    "outside the mirror's prefix": Bad(
        422, "BQ_API_ALLOWED_SOURCES", host("http://127.0.0.1:{port}/secret")
    ),
    "query in the folder URL": Bad(422, "query", host("http://127.0.0.1:{port}/allowed?x=1")),
    # SSRF through redirects of an allowed source
    "redirect to the metadata address": Bad(
        422, "169.254.169.254", field_of("filename", "to-metadata.tif")
    ),
    "redirect to another loopback port": Bad(
        422, "loopback", field_of("filename", "to-other-port.tif")
    ),
    "redirect to localhost": Bad(422, "loopback", field_of("filename", "to-localhost.tif")),
    "redirect to IPv6 loopback": Bad(422, "loopback", field_of("filename", "to-ipv6-loopback.tif")),
    "redirect out of the prefix": Bad(
        422, "BQ_API_ALLOWED_SOURCES", field_of("filename", "to-outside.tif")
    ),
    "redirect to a file URL": Bad(422, "file", field_of("filename", "to-file.tif")),
    # sources that say they are not there, or not ours to read
    "source missing (404)": Bad(422, "HTTP 404", field_of("filename", "missing.tif")),
    "source gone (410)": Bad(422, "HTTP 410", field_of("filename", "gone.tif")),
    "source needs credentials (401)": Bad(422, "HTTP 401", field_of("filename", "needs-login.tif")),
    "source forbidden (403)": Bad(422, "HTTP 403", field_of("filename", "forbidden.tif")),
    # sizes
    "source over the download limit": Bad(
        422, "BQ_API_MAX_DOWNLOAD_BYTES", field_of("filename", "big.tif")
    ),
    "body over the limit": Bad(
        413, "BQ_API_MAX_BODY_BYTES", field_of("properties", {"blob": "x" * MAX_BODY})
    ),
    "chunked body over the limit": Bad(413, "BQ_API_MAX_BODY_BYTES", content=chunks),
    # status endpoints
    "status without a token": Bad(401, "bearer token", method="GET", path="/status", headers={}),
    "status of a malformed id": Bad(
        422, "id", method="GET", path="/status", params={"id": "../etc"}
    ),
    "status of an unknown id": Bad(
        404, "no request", method="GET", path="/status", params={"id": str(uuid.uuid4())}
    ),
    "status/all without a token": Bad(401, "bearer", method="GET", path="/status/all", headers={}),
    "status/all limit 0": Bad(422, "limit", method="GET", path="/status/all", params={"limit": 0}),
    "status/all huge limit": Bad(
        422, "limit", method="GET", path="/status/all", params={"limit": 10**6}
    ),
    "status/all negative offset": Bad(
        422, "offset", method="GET", path="/status/all", params={"offset": -1}
    ),
    "status/all offset over 64 bits": Bad(
        422, "offset", method="GET", path="/status/all", params={"offset": 2**63}
    ),
    "status/all limit over 64 bits": Bad(
        422, "limit", method="GET", path="/status/all", params={"limit": 2**64}
    ),
    "GET /newitem": Bad(405, "Method Not Allowed", method="GET"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_naming_the_problem(context: Context, case: Bad):
    before = len(context.other.requests)
    kwargs: dict[str, Any] = {"headers": case.headers, "params": case.params, "timeout": 30}
    if case.body is not None:
        kwargs["json"] = case.body(context)
    if case.content is not None:
        kwargs["content"] = case.content(context)
    response = http.request(case.method, context.stack.base_url + case.path, **kwargs)

    assert response.status_code == case.status, response.text
    assert case.expect.lower() in response.text.lower(), response.text
    assert TOKEN not in response.text
    assert len(context.other.requests) == before  # nothing reached the other server
    assert context.stack.api.poll() is None


def test_at_least_forty_bad_requests_are_tried():
    assert len(BAD_REQUESTS) >= 40


def test_a_field_error_names_the_field_in_loc_and_in_the_message(context: Context):
    response = context.stack.post(context.body(filename="../x.tif", date="yesterday"))
    assert response.status_code == 422
    answer = response.json()
    assert {tuple(d["loc"]) for d in answer["detail"]} == {("body", "filename"), ("body", "date")}
    assert "filename:" in answer["msg"] and "date:" in answer["msg"]


def test_the_server_keeps_serving_after_the_bad_requests(context: Context):
    assert context.stack.api.poll() is None
    request_id = context.stack.accepted(context.body())
    assert context.stack.status(request_id)["_operation"] == "RECEIVED"
    assert http.get(f"{context.stack.base_url}/health", timeout=30).status_code in (200, 503)


def test_the_apis_files_are_private(tmp_path: Path):
    """The request store (request bodies, SQLite's -wal and -shm included) and the token file
    `make api` generates are 0600, whatever the umask."""
    home, token_file = tmp_path / "bq", tmp_path / "dev" / "token"
    umask = os.umask(0o022)  # what the processes started below inherit
    try:
        with api_stack(tmp_path, {"BQ_HOME": str(home)}) as stack:
            stack.start_api("--token-file", str(token_file), env={"BQ_API_TOKEN": ""})
            token = token_file.read_text().strip()
            answer = http.post(
                f"{stack.base_url}/newitem", json={}, headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 422, answer.text  # the token was taken: past the 401
            database = home / "api" / "requests.sqlite"
            files = [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]
            assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {
                path.name: "0o600" for path in files
            }
            assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    finally:
        os.umask(umask)


def test_public_status_when_configured(tmp_path: Path):
    home = tmp_path / "bq"
    bq = {"BQ_HOME": str(home), "BQ_API_PUBLIC_STATUS": "true"}
    with api_stack(tmp_path, bq) as stack:
        stack.start_api()
        answer = http.get(f"{stack.base_url}/status/all")
        assert answer.status_code == 200 and answer.json() == []
        # POST stays closed.
        assert http.post(f"{stack.base_url}/newitem", json={}).status_code == 401


# ------------------------------------------------------------------ any value (hypothesis)

PROPERTIES = settings(max_examples=60, deadline=None, database=None)
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def post_json(ctx: Context, body: dict[str, Any]) -> httpx.Response:
    """POST as strict ASCII JSON (httpx's own encoder refuses lone surrogates)."""
    content = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    return http.post(f"{ctx.stack.base_url}/newitem", content=content, headers=JSON, timeout=30)


def assert_refused_naming(response: httpx.Response, *prefixes: list[Any]) -> None:
    assert response.status_code == 422, response.text
    for detail in response.json()["detail"]:
        assert any(detail["loc"][: len(p)] == p for p in prefixes), detail


utc_offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
date_texts = st.one_of(
    st.datetimes(timezones=st.builds(timezone, utc_offsets)).map(datetime.isoformat),
    st.datetimes().map(datetime.isoformat),
    st.dates().map(date.isoformat),
    st.text(max_size=40),
)


@pytest.mark.slow
@given(text=date_texts)
@example(text="0001-01-01T00:00:00+14:00")
@example(text="9999-12-31T23:59:59-14:00")
@example(text="0001-01-01T00:00:00-14:00")
@example(text="0999-06-30")
@PROPERTIES
def test_any_date_is_taken_as_utc_or_refused_naming_the_field(context: Context, text: str):
    response = post_json(context, context.body(date=text))
    if response.status_code != 200:
        assert_refused_naming(response, ["body", "date"])
        return
    echoed = context.stack.status(response.json()["id"])["_param"]["properties"]["datetime"]
    assert RFC3339_UTC.match(echoed), echoed
    sent = datetime.fromisoformat(text.replace("Z", "+00:00"))
    sent = sent if sent.tzinfo else sent.replace(tzinfo=UTC)
    assert abs(datetime.fromisoformat(echoed.replace("Z", "+00:00")) - sent) < timedelta(seconds=1)


@pytest.mark.slow
@given(limit=st.integers(), offset=st.integers())
@example(limit=1, offset=2**63 - 1)
@example(limit=1, offset=2**63)
@example(limit=2**64, offset=-(2**64))
@PROPERTIES
def test_any_page_is_answered_or_refused_naming_the_parameter(
    context: Context, limit: int, offset: int
):
    response = http.get(
        f"{context.stack.base_url}/status/all",
        params={"limit": limit, "offset": offset},
        headers=AUTH,
        timeout=30,
    )
    bad = [
        ["query", name]
        for name, value, low, high in (("limit", limit, 1, 1000), ("offset", offset, 0, 2**63 - 1))
        if not low <= value <= high
    ]
    if not bad:
        assert response.status_code == 200 and isinstance(response.json(), list), response.text
        return
    assert_refused_naming(response, *bad)
    assert {tuple(d["loc"]) for d in response.json()["detail"]} == {tuple(b) for b in bad}


any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.slow
@given(properties=st.dictionaries(any_text, json_values, max_size=4), extra=json_values)
@example(properties={"n": 2**63 - 1, "m": -(2**63)}, extra=None)
@example(properties={"n": float("nan")}, extra=None)
@example(properties={}, extra=2**63)
@example(properties={}, extra={"\ud800": None})  # a key no UTF-8 answer can carry as is
@PROPERTIES
def test_any_json_value_is_stored_as_sent_or_refused_naming_where(
    context: Context, properties: dict[str, Any], extra: Any
):
    body = context.body(properties=properties, extra=extra)
    response = post_json(context, body)
    if response.status_code != 200:
        assert_refused_naming(response, ["body", "properties"], ["body", "extra"])
        return
    echoed = context.stack.status(response.json()["id"])["_param"]
    assert echoed["extra"] == extra
    assert {k: v for k, v in echoed["properties"].items() if k != "datetime"} == {
        k: v for k, v in properties.items() if k != "datetime"
    }
