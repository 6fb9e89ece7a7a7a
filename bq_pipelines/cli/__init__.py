"""The `bq-pipelines` command line: the parser and dispatch (main.py), one module per group of
commands, and what they share (common.py)."""

from bq_pipelines.cli.main import main

__all__ = ["main"]
