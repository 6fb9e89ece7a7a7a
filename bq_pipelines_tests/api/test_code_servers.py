"""`--with-daemon`'s workspace: Python modules served by code servers, the rest kept as given."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bq_pipelines.ingestion.code_servers import served_workspace
from bq_pipelines.lib.errors import ConfigError


@pytest.mark.parametrize("text", ["load_from: [", "just a string", "other: 1"])
def test_a_file_that_is_not_a_workspace_is_refused_naming_the_option(tmp_path: Path, text: str):
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(text)
    with (
        pytest.raises(ConfigError, match=r"--workspace .*workspace\.yaml: not a workspace file"),
        served_workspace(workspace, tmp_path),
    ):
        pass


def test_entries_that_name_no_python_module_are_kept_and_start_nothing(tmp_path: Path):
    given = {"load_from": [{"grpc_server": {"host": "code-server", "port": 4000}}]}
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump(given))
    (tmp_path / "served").mkdir()
    with served_workspace(workspace, tmp_path / "served") as served:
        assert yaml.safe_load(served.read_text()) == given


def test_a_module_that_does_not_load_is_refused_with_its_exit_status(tmp_path: Path):
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": "no_such_module_x"}]}))
    (tmp_path / "served").mkdir()
    with (
        pytest.raises(ConfigError, match=r"code server for port .*: exited with"),
        served_workspace(workspace, tmp_path / "served"),
    ):
        pass
