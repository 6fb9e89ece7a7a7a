"""Items of a many-band source produced by several processes: identical to one process's."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest

from bq_pipelines.lib import stac
from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.errors import CogError, RasterTooLarge
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.pipeline import (
    MIN_ITEMS_PER_WORKER,
    ItemPlan,
    Services,
    SourceRef,
    item_workers,
    run_items,
)
from bq_pipelines.lib.storage import LocalObjectStore
from bq_pipelines_tests.fixtures.local_sources import write_ebv_cube

SPECIES, YEARS, SCENARIO = 2 * MIN_ITEMS_PER_WORKER + 3, 3, 2
SUBDATASET = f"/scenario_{SCENARIO}/metric_1/ebv_cube"


def species_plans(cube: Path, year: int = 2) -> list[ItemPlan]:
    """Like a global-mammals partition: species k reads band year + (k - 1) x YEARS."""
    return [
        ItemPlan(
            collection_id="mammals",
            item_id=f"s{SCENARIO}_{year}_{k:04d}",
            folder="mammals",
            file_name=f"s{SCENARIO}_{year}_{k:04d}.tif",
            sources=(SourceRef(str(cube), SUBDATASET, (year + (k - 1) * YEARS,)),),
            cog=CogSettings(),
            datetime=datetime(2015 + 5 * year, 1, 1, tzinfo=UTC),
            properties={"species": k},
            title=f"Species {k}",
            thumbnail=True,
        )
        for k in range(1, SPECIES + 1)
    ]


def collection() -> pystac.Collection:
    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
        pystac.TemporalExtent.from_dict({"interval": [[None, None]]}),
    )
    return pystac.Collection("mammals", "EBV cube species", extent)


def services(root: Path, workers: int) -> Services:
    return Services(
        store=LocalObjectStore(root / "objects"),
        publisher=StaticCatalogPublisher(root / "catalog"),
        work_dir=root / "work",
        item_workers=workers,
    )


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cube") / "mammals.nc"
    write_ebv_cube(path, [1, SCENARIO], SPECIES, YEARS)
    return path


@pytest.mark.slow
def test_two_processes_produce_the_items_and_objects_of_one(cube: Path, tmp_path: Path):
    produced = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        result = run_items(
            species_plans(cube), services(root, workers), "partition", collection=collection()
        )
        objects = {
            str(path.relative_to(root / "objects")): sha256_file(path)
            for path in sorted((root / "objects").rglob("*"))
            if path.is_file()
        }
        # Local hrefs name the store's folder: the only difference allowed.
        items = json.loads(json.dumps([r.item for r in result.items]).replace(str(root), "ROOT"))
        produced[workers] = (items, objects, [r.cog.sha256 for r in result.items])
    assert [item["id"] for item in produced[2][0]] == [p.item_id for p in species_plans(cube)]
    # One COG and one thumbnail per species (and their sidecars).
    assert len([name for name in produced[1][1] if name.endswith(".tif")]) == SPECIES
    assert len([name for name in produced[1][1] if name.endswith(".png")]) == SPECIES
    assert produced[2] == produced[1]
    assert not list((tmp_path / "w2" / "work").rglob("*.tif"))  # staging removed


@pytest.mark.slow
def test_a_failing_item_in_a_worker_fails_the_partition_naming_it(cube: Path, tmp_path: Path):
    plans = species_plans(cube)
    missing = SPECIES * YEARS + 1
    plans[-1] = ItemPlan(
        **{**plans[-1].__dict__, "sources": (SourceRef(str(cube), SUBDATASET, (missing,)),)}
    )
    with pytest.raises(CogError, match=f"item {plans[-1].item_id} from .*band {missing}"):
        run_items(plans, services(tmp_path, 2), "partition", collection=collection())
    assert not (tmp_path / "catalog").exists() or not list((tmp_path / "catalog").rglob("*.json"))


def test_errors_of_a_worker_reach_the_parent_whole():
    refused = pickle.loads(
        pickle.dumps(RasterTooLarge("https://h/a.nc", "too big", not_found=True))
    )
    assert (
        type(refused) is RasterTooLarge and str(refused) == "cannot fetch https://h/a.nc: too big"
    )
    assert (refused.url, refused.reason, refused.not_found) == ("https://h/a.nc", "too big", True)


def test_workers_default_to_the_cpus_this_process_may_use():
    assert item_workers(3) == 3
    assert item_workers(0) == item_workers(None) >= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_items_described_from_memory_equal_items_read_back_from_their_cogs(
    cube: Path, tmp_path: Path, workers: int
):
    """Statistics from the band as read, footprint and projection once per grid: the items
    are those `build_item` makes from each stored COG (the previous way)."""
    plans = species_plans(cube)
    store_services = services(tmp_path, workers)
    result = run_items(plans, store_services, "partition", collection=collection())
    for plan, produced in zip(plans, result.items, strict=True):
        expected = stac.build_item(
            Path(store_services.store.gdal_path(produced.stored.key)),
            item_id=plan.item_id,
            collection_id=plan.collection_id,
            datetime_=plan.datetime,
            properties=plan.properties,
            asset=stac.ItemAssetSpec(href=produced.stored.href, key=plan.item_id, title=plan.title),
            file_size=produced.stored.size,
            file_sha256=produced.stored.sha256,
        ).to_dict()
        item = dict(produced.item)
        item["assets"] = {k: v for k, v in item["assets"].items() if k != stac.THUMBNAIL_ASSET}
        assert json.dumps(item, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_partition_with_the_band_facts_cache_produces_the_same_items(
    cube: Path, tmp_path: Path, workers: int
):
    cache = tmp_path / "band-facts"
    produced = []
    for run in ("without", "first", "second"):
        root = tmp_path / run
        base = services(root, workers)
        run_services = base if run == "without" else replace(base, band_facts_cache=cache)
        result = run_items(species_plans(cube), run_services, "p", collection=collection())
        items = json.dumps([r.item for r in result.items]).replace(str(root), "ROOT")
        produced.append(items)
        assert len(list(cache.glob("*.json"))) == (0 if run == "without" else 1)
    assert produced[0] == produced[1] == produced[2]
