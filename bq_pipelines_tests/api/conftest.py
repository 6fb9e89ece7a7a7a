"""Fixtures of the ingestion API's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bq_pipelines_testkit.api_stack import request_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A request store's database URL: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'requests.sqlite'}"
    else:
        with request_database() as url:
            yield url
