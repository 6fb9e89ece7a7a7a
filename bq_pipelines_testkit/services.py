"""The settings of the local services `scripts/services.py up` starts (moto S3,
stac-fastapi-pgstac, the tile server), as it writes them to `.bq/services.env`."""

from __future__ import annotations

import shlex
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICES_ENV = PROJECT_ROOT / ".bq" / "services.env"


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
