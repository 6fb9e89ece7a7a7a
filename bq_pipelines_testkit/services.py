"""The local services `scripts/services.py up` starts (moto S3, stac-fastapi-pgstac, the tile
server): the user's stack (`.bq/services.env`, what the benches run on) and the tests' own
(`--stack test`, `.bq/test-stack.env`, its database and ports named after the checkout)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shlex
import sys
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICES_ENV = PROJECT_ROOT / ".bq" / "services.env"
SERVICES_SCRIPT = PROJECT_ROOT / "scripts" / "services.py"
# The package the script runs the stack with, one module per concern.
LOCAL_STACK = PROJECT_ROOT / "scripts" / "local_stack"
TEST_STACK_ENV = PROJECT_ROOT / ".bq" / "test-stack.env"
# Its sitecustomize starts every process of the project (the Makefile exports the folder).
STARTUP = PROJECT_ROOT / "startup"


def python_path() -> str:
    """PYTHONPATH for a process the tests start that imports their modules: the project's root,
    and startup/ as the Makefile gives it to every process."""
    return os.pathsep.join([str(PROJECT_ROOT), str(STARTUP)])


@functools.cache
def local_stack(module: str) -> ModuleType:
    """A module of scripts/local_stack/ (`stacks`, `ports`...): the test stack's names come from
    the one place that makes them. The scripts are no installed package: their package is
    loaded from its folder, under the name its modules import each other by."""
    if "local_stack" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "local_stack",
            LOCAL_STACK / "__init__.py",
            submodule_search_locations=[str(LOCAL_STACK)],
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = package  # before running it: its modules import it by name
        spec.loader.exec_module(package)
    return importlib.import_module(f"local_stack.{module}")


def stack_database_prefix() -> str:
    """`<the test stack's database>_`: what tests name the databases they make beside it, so
    `services.py down --stack test` drops any a crashed test left."""
    return f"{local_stack('stacks').test_stack().database}_"


def parse_env_file(path: Path) -> dict[str, str]:
    """`export KEY=value` lines (shell-quoted values) as a dict."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, _, raw = line.partition("=")
        parts = shlex.split(raw)
        values[key] = parts[0] if parts else ""
    return values
