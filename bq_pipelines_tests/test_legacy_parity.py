"""The declarations publish what the legacy catalog published: every legacy item id, asset key,
COG URL, datetime and property (value and JSON type), and each collection's id, title,
description, license and temporal extent, except the differences the declarations list (with
their reasons) and the README's table shows. Planned offline: nothing is fetched."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pystac
import pytest

from bq_pipelines.cli import main
from bq_pipelines.cli.plans import planned_for
from bq_pipelines.datasets.comparison import compare
from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.settings import Settings
from bq_pipelines_tests.fixtures.legacy_catalog import (
    LEGACY_RECORDS,
    LEGACY_STORE_ENV,
    legacy_collection,
    legacy_item,
    legacy_records,
)

README = Path(__file__).resolve().parents[1] / "README.md"
# Items our declarations add to a legacy collection, and why.
ADDED_ITEMS = {
    # The CHELSA-BIOCLIM+ variables of the same folder; the legacy loaded bio1-bio19.
    "chelsa-clim": 57,
    # Months of 1979-2019 the legacy run never reached (it published 4,600 of 4,920).
    "chelsa-monthly": 320,
    # `divergence_raw.tif`, which the legacy CSV filed under the id `divergence_norm`.
    "stressors_qc": 1,
}
# The legacy stressors CSV as the loader read it (its `year` column holds full dates).
STRESSORS_CSV = LEGACY_RECORDS.parent / "stressor_variables.csv"


def legacy_data_root(root: Path) -> Path:
    """The local files of the file-partitioned legacy collection (stressors_qc), named as the
    legacy loader found them (empty: planning reads none), and its CSV as the legacy had it."""
    stressors = root / "stressors_qc"
    stressors.mkdir(parents=True)
    text = STRESSORS_CSV.read_text(encoding="utf-8")
    (stressors / "layers.csv").write_text(text, encoding="utf-8")
    for row in csv.DictReader(text.splitlines()):
        (stressors / row["filename"]).touch()
    return root


@pytest.fixture(scope="module")
def legacy_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = legacy_data_root(tmp_path_factory.mktemp("legacy-sources"))
    return Settings.from_env({**LEGACY_STORE_ENV, "BQ_LOCAL_DATA_ROOT": str(root)})


@pytest.mark.slow
@pytest.mark.parametrize("collection_id", sorted(legacy_records()))
def test_the_plan_reproduces_the_legacy_collection(
    collection_id: str, legacy_settings: Settings
) -> None:
    declaration = {d.id: d for d in load_declarations()}[collection_id]
    planned = planned_for(declaration, legacy_settings, None)
    records = legacy_records()[collection_id]["items"]

    result = compare(
        declaration,
        planned,
        [legacy_item(collection_id, record) for record in records],
        legacy_collection(collection_id),
        "legacy",
    )

    assert result.missing == []
    assert [str(d) for d in result.undeclared] == []
    assert len(result.extra) == ADDED_ITEMS.get(collection_id, 0), result.extra[:5]
    assert result.compared == len(records) - len(result.deliberately_missing)


def test_every_declared_difference_is_in_the_readme_table() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Differences from the legacy catalog") :]
    for declaration in load_declarations():
        for difference in declaration.legacy_differences:
            row = f"| `{declaration.id}` | `{difference.field}` |"
            assert row in table, f"README lacks the row {row} ({difference.reason})"


def write_static_catalog(root: Path, collection_id: str, records: list[dict[str, Any]]) -> Path:
    """A static catalog holding `records` as the legacy published them; its catalog.json."""
    catalog = pystac.Catalog("stac-bq-io", "Biodiversite Quebec - IO catalog")
    collection = pystac.Collection.from_dict(legacy_collection(collection_id))
    catalog.add_child(collection)
    for record in records:
        collection.add_item(pystac.Item.from_dict(legacy_item(collection_id, record)))
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_compare_against_a_static_catalog_reports_missing_items_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in LEGACY_STORE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    records = legacy_records()["earthenv_topography"]["items"]
    same = write_static_catalog(tmp_path / "same", "earthenv_topography", records)
    assert main(["compare", "earthenv_topography", str(same)]) == 0
    assert "earthenv_topography against " in capsys.readouterr().out

    stray = {**records[0], "id": "elevation_legacy_only"}
    other = write_static_catalog(tmp_path / "other", "earthenv_topography", [stray, *records[1:]])
    assert main(["compare", "earthenv_topography", str(other), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == ["elevation_legacy_only"]
    assert report["extra"] == ["elevation"]
    assert report["counts"]["compared"] == len(records) - 1


def test_deliberate_differences_are_reported_apart_and_do_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in LEGACY_STORE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    catalog = write_static_catalog(tmp_path, "ghmts", legacy_records()["ghmts"]["items"])
    assert main(["compare", "ghmts", str(catalog)]) == 0
    out = capsys.readouterr().out
    assert ": same: " in out and "1 deliberate" in out
    assert "SEDAC publishes the Global Human Modification data set" in out
