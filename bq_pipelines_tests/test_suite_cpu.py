"""scripts/suite_cpu.py (`make test-cpu`) charges a run's CPU to the kinds of its processes and to
the tests that started them: how the suite's CPU was found to go to code-location loads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "suite_cpu.py"
TEST_FILE = "bq_pipelines_tests/test_example.py"
# A child that burns CPU for 0.8 s, started by the command the script runs.
BURN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.8: pass"
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}]); sys.exit(3)"


def suite_cpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("suite_cpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # before running it: its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_a_processs_cpu_goes_to_the_test_that_started_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTEST_CURRENT_TEST": f"{TEST_FILE}::test_burn (call)"}
    out = tmp_path / "processes.json"
    command = [sys.executable, str(SCRIPT), "--json", str(out), "--", sys.executable, "-c", PARENT]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 3, result.stderr  # the command's own status
    processes = json.loads(out.read_text())
    [burner] = [p for p in processes if p["command"].endswith(": pass")]
    assert burner["test"] == TEST_FILE and burner["kind"] == "python"
    assert 0.3 <= burner["cpu_seconds"] <= 2.0, burner
    [line] = [line for line in result.stdout.splitlines() if line.endswith(f"  {TEST_FILE}")]
    assert float(line.split()[0]) >= round(burner["cpu_seconds"], 1)  # the table's 0.1 s


def test_the_kinds_of_dagster_processes() -> None:
    kind_of = suite_cpu().kind_of
    venv = "/w/.venv/bin"
    assert kind_of(f"{venv}/python {venv}/dagster api grpc -m bq_pipelines.definitions") == (
        "code server"
    )
    spawned = f"{venv}/python -c from multiprocessing.spawn import spawn_main; spawn_main(a=1)"
    assert kind_of(spawned) == "run worker or step process (spawned)"
    assert kind_of(f"{venv}/python {venv}/bq-pipelines audit demo") == "bq-pipelines CLI"
    assert kind_of(f"{venv}/python -m bq_pipelines.ingestion --with-daemon") == "ingestion API"
    celery = f"{venv}/celery -A bq_pipelines.runtime.celery_worker worker -Q dagster"
    assert kind_of(celery) == "Celery worker"
    assert kind_of(f"{venv}/python -c print('celery' in sys.modules)") == "python"
    assert kind_of("/usr/bin/redis-server 127.0.0.1:6379") == "redis-server"
