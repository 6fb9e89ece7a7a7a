"""ARCHITECTURE.md kept in step with the code: every path it names exists, every package of
bq_pipelines/ is named in it, and the packages its table calls Dagster-free import no Dagster,
directly or through any module of the project they import."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bq_pipelines"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
# A backticked token naming a file or folder: `lib/`, `cog/`, `settings.py`, `bq_pipelines/cli`.
PATH_TOKEN = re.compile(r"`([\w.-]+(?:/[\w.-]+)*/?)`")
NAMED_SUFFIXES = (".py", ".md", ".yaml", ".yml")
SECTION = re.compile(r"^#+ `([^`]+)`", re.MULTILINE)


def is_path(token: str) -> bool:
    return token.endswith(("/", *NAMED_SUFFIXES)) or token.startswith("bq_pipelines/")


def candidates(path: Path) -> list[Path]:
    """Where a named module or package may live: `cog/`, `cog.py` and `bq_pipelines/cli` name
    either the module `cog.py` or the package `cog/`, whichever the code has."""
    if path.suffix == ".py":
        return [path, path.with_suffix("")]
    if path.suffix in NAMED_SUFFIXES:
        return [path]
    return [path, path.with_suffix(".py")]


def resolve(token: str, base: Path) -> list[Path]:
    """From the repository root when the token starts with one of its folders or files, else
    relative to the package its section describes."""
    origin = ROOT if (ROOT / token.split("/")[0]).exists() else base
    return candidates(origin / token.rstrip("/"))


def named_paths(text: str) -> Iterator[tuple[str, list[Path]]]:
    """Each path token of the text with the places it may mean."""
    base, position = ROOT, 0
    for section in [*SECTION.finditer(text), None]:
        end = section.start() if section else len(text)
        for match in PATH_TOKEN.finditer(text, position, end):
            if is_path(match.group(1)):
                yield match.group(1), resolve(match.group(1), base)
        if section is None:
            break
        heading = section.group(1)
        yield heading, resolve(heading, ROOT)
        base = ROOT / heading.rstrip("/")
        base = base if base.is_dir() else base.parent
        position = section.end()


def test_every_path_named_exists() -> None:
    missing = [
        token
        for token, places in named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
        if not any(place.exists() for place in places)
    ]
    assert not missing, f"ARCHITECTURE.md names paths the project does not have: {missing}"


def test_every_package_is_named() -> None:
    named = {
        place.resolve()
        for _, places in named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
        for place in places
    }
    packages = [init.parent for init in PACKAGE.rglob("__init__.py") if ".venv" not in init.parts]
    unnamed = [str(p.relative_to(ROOT)) for p in packages if p.resolve() not in named]
    assert not unnamed, f"packages ARCHITECTURE.md does not describe: {sorted(unnamed)}"


def dagster_free_modules() -> set[Path]:
    """The module files the layer table calls Dagster-free, its exceptions left out."""
    table = re.findall(r"^\| `([^`]+)` \| (Dagster-free[^|]*)\|", ARCHITECTURE.read_text(), re.M)
    assert table, "ARCHITECTURE.md's layer table declares no Dagster-free package"
    modules: set[Path] = set()
    for name, layer in table:
        path = ROOT / name.rstrip("/")
        excepted = {ROOT / e for e in re.findall(r"`([^`]+)`", layer.partition("except")[2])}
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        modules |= {f for f in files if f not in excepted}
    return modules


@functools.cache  # the walks below ask for the same names over and over
def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (None outside the project)."""
    if name != "bq_pipelines" and not name.startswith("bq_pipelines."):
        return None
    path = ROOT.joinpath(*name.split("."))
    for place in (path.with_suffix(".py"), path / "__init__.py"):
        if place.exists():
            return place
    return None


@functools.cache  # each file parsed once, not once per walk reaching it (seconds per test)
def imports(path: Path, at_import_time: bool = False) -> tuple[str, ...]:
    """Every module a file imports, at its top or inside a function (only at its top when
    `at_import_time`), with the packages that importing it runs (`a.b.c` imports `a` and `a.b`
    first)."""
    return tuple(_imports(path, at_import_time))


def _imports(path: Path, at_import_time: bool) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = tree.body if at_import_time else list(ast.walk(tree))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            yield from (".".join(parts[: i + 1]) for i in range(len(parts)))


def is_dagster(name: str) -> bool:
    top = name.split(".")[0]
    return top == "dagster" or top.startswith("dagster_")


def dagster_chain(start: Path) -> list[str] | None:
    """The import chain from `start` to a Dagster module, if there is one."""
    seen: set[Path] = set()
    stack: list[tuple[Path, list[str]]] = [(start, [str(start.relative_to(ROOT))])]
    while stack:
        path, chain = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path):
            if is_dagster(name):
                return [*chain, name]
            found = module_file(name)
            if found is not None and found not in seen:
                stack.append((found, [*chain, name]))
    return None


def test_dagster_free_packages_import_no_dagster() -> None:
    modules = dagster_free_modules()
    assert any(m.is_relative_to(PACKAGE / "lib") for m in modules)
    chains = {str(m.relative_to(ROOT)): dagster_chain(m) for m in sorted(modules)}
    offending = {module: chain for module, chain in chains.items() if chain}
    assert not offending, f"Dagster imported by Dagster-free modules: {offending}"


def test_the_import_walk_finds_dagster_through_the_project() -> None:
    # The walk itself: the code location's module reaches Dagster, directly or not.
    assert dagster_chain(PACKAGE / "definitions.py")
    assert dagster_chain(PACKAGE / "defs" / "catalog_backup.py")


def project_imports(path: Path) -> set[Path]:
    """The project modules a file imports, anywhere in it."""
    found = (module_file(name) for name in imports(path))
    return {f for f in found if f is not None and f != path}


def reachable(start: Path) -> set[Path]:
    """Every project module importing `start` may run, transitively."""
    seen: set[Path] = set()
    stack = [start]
    while stack:
        path = stack.pop()
        if path not in seen:
            seen.add(path)
            stack.extend(project_imports(path) - seen)
    return seen


def test_lib_and_the_settings_import_only_the_core_library() -> None:
    # The settings configure every other package; were they to import one (the URL policy once
    # lived in ingestion/, the DSN parser in backup/), that package importing the settings back
    # would close a cycle.
    lib = PACKAGE / "lib"
    starts = [PACKAGE / "settings.py", *sorted(lib.rglob("*.py"))]
    outside = {
        str(start.relative_to(ROOT)): sorted(
            str(m.relative_to(ROOT))
            for m in reachable(start)
            if m != start and not m.is_relative_to(lib) and m != PACKAGE / "__init__.py"
        )
        for start in starts
    }
    assert not {k: v for k, v in outside.items() if v}, outside


def top_level_imports(path: Path) -> set[Path]:
    """The project modules a file imports when it is imported, its own enclosing packages left
    out (Python is importing them already when it reaches the file)."""
    found = (module_file(name) for name in imports(path, at_import_time=True))
    return {
        f
        for f in found
        if f is not None
        and f != path
        and not (f.name == "__init__.py" and path.is_relative_to(f.parent))
    }


def test_no_module_imports_itself_back_at_import_time() -> None:
    graph = {p: top_level_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
    cycles: list[list[str]] = []
    state: dict[Path, int] = {}

    def visit(node: Path, trail: list[Path]) -> None:
        state[node] = 1
        for nxt in graph.get(node, set()):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] if nxt in trail else [nxt]
                cycles.append([str(p.relative_to(ROOT)) for p in [*cycle, nxt]])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in graph:
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles[:3]}"
