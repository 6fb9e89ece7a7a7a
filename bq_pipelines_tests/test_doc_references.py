"""Nothing cites a file the project does not have: every relative link of a markdown file, and
every `*.md` file a markdown, Python or YAML file names, exists in the repository. And the
benchmark results are the assembled ones, not edited by hand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = {".md", ".py", ".yaml", ".yml"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")


def repository_files() -> list[Path]:
    """Tracked and new files, what .gitignore leaves out (.venv, .bq) excluded."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


FILES = repository_files()
FILE_NAMES = {path.name for path in FILES}


def exists_from(citing: Path, target: str) -> bool:
    """Relative to the citing file's folder or one of its parents (up to the repository root),
    the way a reader of that file would look for it."""
    folder = citing.parent
    while True:
        if (folder / target).exists():
            return True
        if folder == ROOT:
            return False
        folder = folder.parent


def broken_links(path: Path, text: str) -> list[str]:
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor of the same page
        relative = target.split("#")[0]
        if relative and not (path.parent / relative).exists():
            broken.append(target)
    return broken


def cited_file_exists(citing: Path, name: str) -> bool:
    """A bare name is any file of that name; a path, relative to the citing file (or a folder
    above it), or the end of a file's path (`basemap/README.md` read from package data)."""
    if "/" not in name:
        return name in FILE_NAMES
    return exists_from(citing, name) or any(path.as_posix().endswith(f"/{name}") for path in FILES)


def missing_md_names(path: Path, text: str) -> list[str]:
    return [name for name in MD_NAME.findall(text) if not cited_file_exists(path, name)]


def test_every_cited_file_exists() -> None:
    problems = {}
    for path in FILES:
        if path.suffix not in SCANNED:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found = broken_links(path, text) if path.suffix == ".md" else []
        found += missing_md_names(path, text)
        if found:
            problems[str(path.relative_to(ROOT))] = sorted(set(found))
    assert not problems, f"files cited that the project does not have: {problems}"


def test_the_checks_catch_a_missing_file() -> None:
    readme, absent = ROOT / "README.md", "NO-SUCH-FILE" + ".md"  # not a citation of this file
    text = f"see [the notes]({absent}#x), [web](https://x.org), [deploy](deploy/README.md)"
    assert broken_links(readme, text) == [f"{absent}#x"]
    text = f"as {absent} says; see deploy/README.md, basemap/README.md and NO/{absent}"
    assert missing_md_names(readme, text) == [absent, f"NO/{absent}"]


def test_bench_results_are_assembled_from_the_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "assemble.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def github_anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_the_readme_contents_list_every_section() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    contents, _, body = text.partition("## Contents\n")[2].partition("\n## ")
    listed = re.findall(r"\]\(#([\w-]+)\)", contents)
    headings = re.findall(r"^##{1,2} (.+)$", "## " + body, re.MULTILINE)
    assert listed == [github_anchor(title) for title in headings]
