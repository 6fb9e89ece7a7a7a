"""The local services `scripts/services.py up` starts (moto S3, stac-fastapi-pgstac, the tile
server): the user's stack (`.bq/services.env`, what the benches run on) and the tests' own
(`--stack test`, `.bq/test-stack.env`, its database and ports named after the checkout)."""

from __future__ import annotations

import functools
import importlib.util
import shlex
import sys
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICES_ENV = PROJECT_ROOT / ".bq" / "services.env"
SERVICES_SCRIPT = PROJECT_ROOT / "scripts" / "services.py"
TEST_STACK_ENV = PROJECT_ROOT / ".bq" / "test-stack.env"


@functools.cache
def services_script() -> ModuleType:
    """scripts/services.py as a module: the test stack's names come from the one place that
    makes them."""
    spec = importlib.util.spec_from_file_location("bq_services_script", SERVICES_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def stack_database_prefix() -> str:
    """`<the test stack's database>_`: what tests name the databases they make beside it, so
    `services.py down --stack test` drops any a crashed test left."""
    return f"{services_script().test_stack().database}_"


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
