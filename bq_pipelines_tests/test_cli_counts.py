"""What the command line prints about one partition reads right: "1 partition", "1 item"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bq_pipelines.cli import main


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Embedded defaults under tmp, no DAGSTER_HOME (in-process runs); returns BQ_HOME."""
    for name in list(os.environ):
        if name.startswith("BQ_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    return tmp_path / "bq"


def test_one_partition_is_counted_in_the_singular(cli_env: Path, capsys) -> None:
    assert main(["demo-data"]) == 0
    assert main(["materialize", "demo", "--partition", "elevation"]) == 0
    out = capsys.readouterr().out
    assert "total: 1 partition, 1 published, 0 skipped, 0 failed" in out
    assert "collection demo: 1 item in " in out


def test_one_failed_partition_is_counted_in_the_singular(cli_env: Path, capsys) -> None:
    # No `demo-data`: the source is missing.
    assert main(["materialize", "demo", "--partition", "elevation"]) == 1
    captured = capsys.readouterr()
    assert "total: 1 partition, 0 published, 0 skipped, 1 failed" in captured.out
    assert "demo: 1 of 1 partition failed" in captured.err
