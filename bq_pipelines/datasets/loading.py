"""Reading dataset declarations: the built-in `defs/<id>/defs.yaml` files, or any YAML file,
validated together. Errors name the file, the field and the reason."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bq_pipelines.datasets.overlap import check_distinct_keys
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError

# libyaml's loader when PyYAML has it: the GFW grid makes pure-Python parsing slow.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFS_FILE = "defs.yaml"


def _format_validation_error(origin: str, error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        reason = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            reason = "unknown key"
        # A whole-declaration check names its field first.
        lines.append(f"{origin}: {location}: {reason}" if location else f"{origin}: {reason}")
    return "\n".join(lines)


def parse_declaration(data: Any, origin: str) -> Declaration:
    """Validate one declaration; ConfigError lists every problem as `origin: field: reason`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a dataset declaration must be a mapping")
    try:
        return Declaration.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(origin, error)) from None


def declaration_origin(path: Path) -> str:
    """How errors name a declaration file: `<id>/defs.yaml`, or the file name."""
    return f"{path.parent.name}/{path.name}" if path.name == DEFS_FILE else path.name


def load_declaration_file(path: Path) -> Declaration:
    """A dataset file: `defs/<id>/defs.yaml` (the StacDataset component: the declaration is
    its `attributes`) or a bare `<id>.yaml` declaration. The id must match the folder (file).
    Parsed once per version of the file (a code location's load asks for each several times)."""
    version = file_version(path)
    if version not in _LOADED:
        _LOADED[version] = _read_declaration_file(path)
    return _LOADED[version]


def remember_declaration(path: Path, declaration: Declaration) -> None:
    """`declaration`, validated from `path` elsewhere (by Dagster, for the StacDataset
    component), is what `load_declaration_file(path)` returns while the file is unchanged."""
    _LOADED[file_version(path)] = declaration


# Declarations by (file, modification time, size): a file edited since is read again.
_LOADED: dict[tuple[Path, int, int], Declaration] = {}


def file_version(path: Path) -> tuple[Path, int, int]:
    """(resolved path, modification time, size): a file edited since is another version."""
    stat = path.stat()
    return path.resolve(), stat.st_mtime_ns, stat.st_size


def _read_declaration_file(path: Path) -> Declaration:
    origin = declaration_origin(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML: {error}") from None
    expected_id = path.stem
    if path.name == DEFS_FILE:
        expected_id = path.parent.name
        if not isinstance(data, dict) or "attributes" not in data:
            raise ConfigError(f"{origin}: a component file needs `type` and `attributes`")
        data = data["attributes"]
    declaration = parse_declaration(data, origin)
    if declaration.id != expected_id:
        where = "folder" if path.name == DEFS_FILE else "file"
        raise ConfigError(f"{origin}: id: {declaration.id!r} must match the {where} name")
    return declaration


def builtin_declaration_files() -> list[Path]:
    """`bq_pipelines/defs/<id>/defs.yaml` of every dataset."""
    folder = resources.files("bq_pipelines") / "defs"
    return sorted(
        Path(str(p / DEFS_FILE))
        for p in folder.iterdir()
        if p.is_dir() and (p / DEFS_FILE).is_file()
    )


def builtin_declaration_path(dataset_id: str) -> Path:
    """`bq_pipelines/defs/<id>/defs.yaml`; ConfigError naming the known ids otherwise."""
    paths = {p.parent.name: p for p in builtin_declaration_files()}
    if dataset_id not in paths:
        raise ConfigError(f"no dataset {dataset_id!r}; known: {', '.join(sorted(paths))}")
    return paths[dataset_id]


def builtin_declaration_data(dataset_id: str) -> dict[str, Any]:
    """The attributes of a built-in dataset's component file, as plain data (for a variant
    of it, e.g. under another id)."""
    data = yaml.safe_load(builtin_declaration_path(dataset_id).read_text(encoding="utf-8"))
    attributes: dict[str, Any] = data["attributes"]
    return attributes


def load_declarations(paths: Iterable[Path] | None = None) -> list[Declaration]:
    """Every declaration (the built-in ones by default); ids must be unique, and no two
    datasets may write the same object key."""
    files = list(paths or builtin_declaration_files())
    declarations = [load_declaration_file(p) for p in files]
    ids = [d.id for d in declarations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"dataset ids declared twice: {duplicates}")
    origins = [declaration_origin(p) for p in files]
    check_distinct_keys(list(zip(origins, declarations, strict=True)))
    return declarations
