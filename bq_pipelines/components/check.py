"""`python -m bq_pipelines.components.check [defs.yaml ...]`: every dataset file validated as
the code location loads it, each problem with its file and line.

`dg check yaml` validates against the component's JSON schema (unknown keys, types), but
dagster-dg 1.13.27 keeps one file per component type when it checks a whole project, so with
21 StacDataset instances it checks one (`dg check yaml <folder>` checks that folder). This
checks every file, and runs the declaration's own refusals too (templates, partitions, ids,
object keys shared between datasets), which no JSON schema can express.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from dagster_shared.yaml_utils import parse_yamls_with_source_position
from pydantic import ValidationError

from bq_pipelines.datasets.loading import (
    builtin_declaration_files,
    declaration_origin,
    load_declarations,
)
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError

COMPONENT_TYPE = "bq_pipelines.components.StacDataset"


def _line(tree: Any, location: Sequence[str | int]) -> int:
    """The line of the deepest key of `location` found in the file (1-based)."""
    node = tree
    for part in location:
        child = node.children.get(part) if hasattr(node, "children") else None
        if child is None:
            break
        node = child
    return int(node.position.start.line)


def check_file(path: Path) -> list[str]:
    """`<file>:<line>: <field>: <reason>` for each problem of one dataset file."""
    text = path.read_text(encoding="utf-8")
    try:
        [document] = parse_yamls_with_source_position(text, filename=str(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        return [f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {error}"]
    except ValueError:
        return [f"{path}:1: one YAML document per dataset file"]
    data, tree = document.value, document.source_position_tree
    if not isinstance(data, dict) or data.get("type") != COMPONENT_TYPE:
        return [f"{path}:1: type: must be {COMPONENT_TYPE}"]
    if not isinstance(data.get("attributes"), dict):
        return [f"{path}:1: attributes: the dataset declaration (a mapping) is missing"]
    try:
        declaration = Declaration.model_validate(data["attributes"])
    except ValidationError as error:
        return [_problem_line(path, tree, problem) for problem in error.errors()]
    if declaration.id != path.parent.name:
        line = _line(tree, ["attributes", "id"])
        return [f"{path}:{line}: id: {declaration.id!r} must match the folder name"]
    return []


def _problem_line(path: Path, tree: Any, problem: Any) -> str:
    """`<file>:<line>: <field>: <reason>` of one pydantic error."""
    location = [str(p) if not isinstance(p, int) else p for p in problem["loc"]]
    field = ".".join(str(p) for p in location)
    reason = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        reason = "unknown key"
    if not location:
        # A whole-declaration check names its field first: `item.id: ...`.
        named = re.match(r"^([A-Za-z_][\w.\[\]]*): ", reason)
        if named:
            location = [
                int(part) if part.isdigit() else part
                for part in re.split(r"[.\[\]]+", named.group(1))
                if part
            ]
    line = _line(tree, ["attributes", *location])
    return f"{path}:{line}: {field + ': ' if field else ''}{reason}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in args] or builtin_declaration_files()
    problems = [p for path in paths for p in check_file(path)]
    if not problems and not args:
        try:  # what involves several datasets: unique ids, object keys
            load_declarations()
        except ConfigError as error:
            problems.append(str(error))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    names = ", ".join(declaration_origin(p) for p in paths)
    print(f"{len(paths)} dataset files valid: {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
