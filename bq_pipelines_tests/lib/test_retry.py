"""Retries within a time budget (lib/retry.py on tenacity): the budget is a deadline for every
attempt, against endpoints that hang or keep failing (local servers, no fakes of our code)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.loaders
import httpx
import pytest

from bq_pipelines.lib.catalog.stac_api import StacApiPublisher
from bq_pipelines.lib.errors import CatalogError, StorageError
from bq_pipelines.lib.retry import Deadline, Outage, RetryPolicy, with_retries
from bq_pipelines.lib.storage import S3Clients, S3ObjectStore
from bq_pipelines.lib.storage.s3_client import ClientLimits

# What a loaded machine (load 8 on 2 cores) may add to a budget: creating a botocore client,
# the last attempt's bookkeeping. The calls measured would take minutes without the deadline.
SLACK_SECONDS = 3.0


class Transient(Exception):
    pass


def test_transient_failures_are_retried_until_success() -> None:
    calls: list[float | None] = []

    def operation(deadline: Deadline) -> str:
        calls.append(deadline.remaining())
        if len(calls) < 3:
            raise Transient("not yet")
        return "done"

    policy = RetryPolicy(attempts=5, backoff_seconds=0.01, budget_seconds=60)
    result = with_retries(
        operation, policy=policy, is_transient=lambda e: isinstance(e, Transient), describe="op"
    )
    assert result == "done" and len(calls) == 3
    # Each attempt is told what remains of the budget, less and less.
    remaining = [r for r in calls if r is not None]
    assert len(remaining) == 3 and remaining == sorted(remaining, reverse=True)
    assert all(0 < r <= 60 for r in remaining)


def test_a_permanent_error_is_not_retried_and_propagates_unchanged() -> None:
    calls = []
    error = ValueError("refused")

    def operation(_: Deadline) -> None:
        calls.append(1)
        raise error

    with pytest.raises(ValueError) as caught:
        with_retries(
            operation,
            policy=RetryPolicy(attempts=5, backoff_seconds=0.01),
            is_transient=lambda e: isinstance(e, Transient),
            describe="op",
        )
    assert caught.value is error and calls == [1]


def test_no_attempt_starts_past_the_budget_and_each_is_capped_by_it() -> None:
    caps: list[float] = []

    def operation(deadline: Deadline) -> None:
        caps.append(deadline.cap(30.0))  # what a 30 s timeout becomes
        raise Transient("down")

    policy = RetryPolicy(
        attempts=1000, backoff_seconds=0.05, max_backoff_seconds=0.2, budget_seconds=1
    )
    started = time.monotonic()
    with pytest.raises(Transient):
        with_retries(
            operation, policy=policy, is_transient=lambda e: isinstance(e, Transient), describe="op"
        )
    assert time.monotonic() - started < 1 + SLACK_SECONDS
    assert len(caps) > 2 and all(0 < cap <= 1 for cap in caps)


def test_an_outage_spent_budget_makes_the_next_operations_try_once() -> None:
    outage, calls = Outage(), []

    def failing(_: Deadline) -> None:
        calls.append(1)
        raise Transient("down")

    policy = RetryPolicy(attempts=3, backoff_seconds=0.01)
    transient = lambda e: isinstance(e, Transient)  # noqa: E731
    with pytest.raises(Transient):
        with_retries(failing, policy=policy, is_transient=transient, describe="op", outage=outage)
    assert len(calls) == 3 and outage.ongoing
    with pytest.raises(Transient):
        with_retries(failing, policy=policy, is_transient=transient, describe="op", outage=outage)
    assert len(calls) == 4
    assert (
        with_retries(
            lambda _: "up", policy=policy, is_transient=transient, describe="op", outage=outage
        )
        == "up"
    )
    assert not outage.ongoing


def test_client_limits_fit_the_remaining_time() -> None:
    clients = S3Clients("http://127.0.0.1:9", "us-east-1")
    assert clients.limits_within(None) == clients.limits
    assert clients.limits_within(10_000) == clients.limits
    for seconds in (150.0, 60.0, 10.0, 3.0, 1.0, 0.2):
        limits = clients.limits_within(seconds)
        assert limits.worst_case() <= seconds, (seconds, limits)
        assert limits.attempts >= 1 and limits.connect_timeout > 0 and limits.read_timeout > 0
    # Fewer botocore attempts first, then (one attempt left) shorter timeouts.
    assert clients.limits_within(150.0) == ClientLimits(4, 5.0, 30.0)
    assert clients.limits_within(60.0) == ClientLimits(1, 5.0, 30.0)
    assert clients.limits_within(3.0).read_timeout < 3.0
    assert ClientLimits(5, 5.0, 30.0).worst_case() > 150  # why the budget must cut them


def test_a_new_store_parses_no_service_model_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store (a resource, a run, a test) makes its own clients: they share the process's
    parsed service models (botocore parsed S3's again for each session, ~90 ms of CPU)."""
    assert S3Clients("http://127.0.0.1:9", "us-east-1", "a", "b").client.meta.region_name
    read: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file

    def counted(loader: botocore.loaders.JSONFileLoader, path: str) -> Any:
        read.append(path)
        return load_file(loader, path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counted)
    other = S3Clients("http://127.0.0.1:9", "ca-central-1", "c", "d").within(3.0)
    assert other.meta.region_name == "ca-central-1" and read == []


# --------------------------------------------------------------------------- endpoints


class _Hanging:
    """A TCP server that accepts connections, reads the request and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections.append(connection)  # held open, never answered

    def close(self) -> None:
        self._stop.set()
        for connection in self.connections:
            connection.close()
        self.server.close()


class _Unavailable(BaseHTTPRequestHandler):
    requests = 0

    def _refuse(self) -> None:
        type(self).requests += 1
        body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hanging() -> Iterator[_Hanging]:
    server = _Hanging()
    yield server
    server.close()


@pytest.fixture
def unavailable() -> Iterator[tuple[str, type[_Unavailable]]]:
    handler = type("Unavailable", (_Unavailable,), {"requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _store(url: str, budget: float, **limits: float) -> S3ObjectStore:
    # By default the production configuration (5 botocore attempts, 5 s + 30 s timeouts):
    # unbounded, one operation against a hung endpoint would take minutes.
    clients = S3Clients(url, "us-east-1", "bq-test", "bq-test-secret", **limits)  # type: ignore[arg-type]
    policy = RetryPolicy(
        attempts=100, backoff_seconds=0.1, max_backoff_seconds=0.5, budget_seconds=budget
    )
    return S3ObjectStore(clients, "bq-io", retry=policy)


def test_an_s3_operation_against_a_hung_endpoint_ends_within_its_budget(hanging: _Hanging) -> None:
    store = _store(hanging.url, budget=3.0)
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"S3 head s3://bq-io/io/a\.tif failed"):
        store.stat("io/a.tif")
    assert time.monotonic() - started < 3.0 + SLACK_SECONDS
    assert hanging.connections  # it did wait on the endpoint
    assert store.outage.ongoing


def test_botocore_retries_stay_inside_the_budget_on_503s(
    unavailable: tuple[str, type[_Unavailable]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = unavailable
    # Requests short enough that botocore may retry within the budget.
    store = _store(url, budget=6.0, connect_timeout=0.5, read_timeout=1.0)
    started = time.monotonic()
    # The last attempt's reason is the 503, or on a loaded machine a read timeout of the local
    # server (the tests' own, answering from this busy process): either way the operation named.
    with pytest.raises(StorageError, match=r"S3 head s3://bq-io/io/a\.tif failed: "):
        store.stat("io/a.tif")
    assert time.monotonic() - started < 6.0 + SLACK_SECONDS
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert any("(503)" in message for message in retries), retries
    ours = 1 + len(retries)
    # Several attempts of ours, each holding botocore's own: all within the budget.
    assert ours > 1 and handler.requests > ours


def test_a_stac_api_call_against_a_hung_endpoint_ends_within_its_budget(hanging: _Hanging) -> None:
    policy = RetryPolicy(
        attempts=100, backoff_seconds=0.1, max_backoff_seconds=0.5, budget_seconds=2
    )
    started = time.monotonic()
    api = StacApiPublisher(hanging.url, retry=policy, timeout=httpx.Timeout(30.0))
    with api, pytest.raises(CatalogError, match="unreachable"):
        api.get_collection("demo")
    assert time.monotonic() - started < 2.0 + SLACK_SECONDS
    assert hanging.connections
