"""Datasets sharing a storage folder: refused unless they provably never write the same object
key `<prefix>/<folder>/<file>` (a shared key loses data silently)."""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bq_pipelines.datasets import rendering, validation
from bq_pipelines.lib.errors import ConfigError

if TYPE_CHECKING:
    from bq_pipelines.datasets.schema import Declaration


def check_distinct_keys(declarations: Sequence[tuple[str, Declaration]]) -> None:
    """ConfigError when two datasets can write the same object key `<prefix>/<folder>/<file>`.

    Two datasets in the same folder are refused unless they provably never write the same
    file: when every partition of both is declared (static values, bounded series), their file
    names are rendered and must not meet (CHELSA's climatologies and projections share the
    legacy folder); otherwise their file name templates must never render alike: their fixed
    beginnings (or endings) differ, neither being a prefix (a suffix) of the other, e.g.
    `..._gain_{tile}.tif` and `..._lossyear_{tile}.tif`. Anything weaker would have to trust
    which values a variable will take (a file dropped in a folder, a series growing), and a
    shared key loses data silently. A declared value added later is checked at that load.
    """
    by_folder: dict[str, list[tuple[str, Declaration]]] = {}
    for origin, declaration in declarations:
        folder = "/".join(p for p in declaration.folder.split("/") if p)
        by_folder.setdefault(folder, []).append((origin, declaration))
    for folder, sharing in by_folder.items():
        for (first_origin, first), (other_origin, other) in itertools.combinations(sharing, 2):
            met = _file_names_met(first, other)
            if met is not None:
                raise ConfigError(
                    f"{other_origin}: folder: {folder!r} is also the folder of {first_origin}, "
                    f"and their file names {met}: one dataset would overwrite the other's "
                    "objects; give each dataset its own folder"
                )


def every_file_name(declaration: Declaration) -> frozenset[str] | None:
    """Every COG file name the dataset can write, when its partitions are all declared (static
    values, a bounded time series, items not named after a source's content) and few enough to
    render; None when they are not known in advance."""
    partitions = declaration.partitions
    expand = declaration.item.expand
    if (
        partitions.files is not None
        or (partitions.time is not None and partitions.time.end is None)
        or (expand is not None and (expand.names is not None or expand.count > 1))
    ):
        return None
    combinations = math.prod(len(d.values) for d in partitions.static)
    periods = len(partitions.time.period_starts()) if partitions.time else 1
    if combinations * periods > validation.MAX_PARTITIONS_RENDERED_AT_LOAD:
        return None
    return frozenset(
        rendering.item_names(declaration, item_variables)[1]
        for _, variables in validation.partition_samples(declaration)
        for item_variables in validation.sampled_items(declaration, variables)
    )


def _file_names_met(first: Declaration, other: Declaration) -> str | None:
    """How two datasets of one folder may write the same file, or None when they cannot: their
    file names when both are known in advance (every partition declared), their templates
    otherwise."""
    names, other_names = every_file_name(first), every_file_name(other)
    if names is not None and other_names is not None:
        shared = sorted(names & other_names)
        return f"meet ({', '.join(map(repr, shared[:3]))})" if shared else None
    a, b = validation.key_file_template(first), validation.key_file_template(other)
    return f"may be the same ({b!r} and {a!r})" if templates_may_overlap(a, b) else None


def _literal_ends(template: str) -> tuple[str, str, bool]:
    """(fixed beginning, fixed ending, whether the template is fixed text only)."""
    parsed = list(string.Formatter().parse(template))
    if all(name is None for _, name, _, _ in parsed):
        text = "".join(literal for literal, _, _, _ in parsed)
        return text, text, True
    # An escaped brace (`{{`) splits a literal into several parsed pieces: join them all up to
    # the first field, and all after the last one.
    fields = [i for i, (_, name, _, _) in enumerate(parsed) if name is not None]
    head = "".join(literal for literal, _, _, _ in parsed[: fields[0] + 1])
    tail = "".join(literal for literal, _, _, _ in parsed[fields[-1] + 1 :])
    return head, tail, False


def templates_may_overlap(first: str, second: str) -> bool:
    """False only when no rendering of `first` can equal one of `second`."""
    ends = [_literal_ends(first), _literal_ends(second)]
    fixed = [text for text, _, is_fixed in ends if is_fixed]
    if len(fixed) == 2:
        return fixed[0] == fixed[1]
    if fixed:  # a fixed name against a template: does the template's frame fit it?
        [(head, tail, _)] = [e for e in ends if not e[2]]
        text = fixed[0]
        return text.startswith(head) and text.endswith(tail) and len(text) >= len(head + tail)
    (head_a, tail_a, _), (head_b, tail_b, _) = ends
    heads_agree = head_a.startswith(head_b) or head_b.startswith(head_a)
    tails_agree = tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    return heads_agree and tails_agree
