"""Benchmark: STAC item validation, ours (jsonschema-rs) against python-jsonschema, same run.

Run from the project root: `.venv/bin/python bench/bench_validation.py [--items 5000]
[--baseline-items 500]`.

The item is shaped like a global-mammals item (229,050 of them in the catalog): one COG asset,
projection v2.0 / raster / file extensions, a few numeric properties, built by `build_item` from
a generated one-band float32 EPSG:4326 COG. Both validators check the same dict against the same
schemas (core STAC 1.1.0 + the extension schemas shipped in the package), offline:
- ours: `stac.validate(item_dict)`, what the pipeline calls for every item;
- baseline: what `stac.validate` did before, python-jsonschema validators built once per schema
  with a `referencing` registry over the same schemas, `best_match` over `iter_errors`.
Prints ms per item for the whole call and for the schema checks alone, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jsonschema.exceptions  # noqa: E402
import jsonschema.validators  # noqa: E402
from referencing import Registry, Resource  # noqa: E402
from results import write_result  # noqa: E402
from rio_cogeo.cogeo import cog_translate  # noqa: E402
from rio_cogeo.profiles import cog_profiles  # noqa: E402

from bq_pipelines.lib import stac  # noqa: E402
from bq_pipelines.lib.errors import StacValidationError  # noqa: E402
from bq_pipelines.lib.hashing import sha256_bytes  # noqa: E402
from bq_pipelines.lib.stac import validation  # noqa: E402
from bq_pipelines_testkit.rasters import RasterSpec, write_raster  # noqa: E402


def mammals_item(folder: Path) -> dict[str, Any]:
    spec = RasterSpec(
        dtype="float32", nodata=-1.0, width=720, height=360, resolution=0.5, origin=(-180, 90)
    )
    source = write_raster(folder / "source.tif", spec)
    cog = folder / "scenario1_2015_0001.tif"
    # rio-cogeo leaves its profiles' get (a copy of the profile) unannotated.
    profile = cog_profiles.get("deflate")  # type: ignore[no-untyped-call]
    cog_translate(str(source), str(cog), profile, quiet=True)
    data = cog.read_bytes()
    item = stac.build_item(
        cog,
        item_id="scenario1_2015_0001",
        collection_id="global-mammals",
        datetime_=datetime(2015, 1, 1, tzinfo=UTC),
        asset=stac.ItemAssetSpec(
            href="https://object-store.example/bq-io/io/global-mammals/scenario1_2015_0001.tif",
            key="scenario1_2015_0001",
            title="Species 1, scenario 1, 2015",
        ),
        properties={"scenario": 1, "year": 2015, "species": 1},
        file_size=len(data),
        file_sha256=sha256_bytes(data),
    )
    # As a reader of the item's JSON sees it (tuples become arrays).
    read: dict[str, Any] = json.loads(
        json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False))
    )
    return read


class PythonJsonschema:
    """The previous implementation of `stac.validate`, on the same schemas."""

    def __init__(self) -> None:
        # The very schemas ours compiles (core + shipped), so only the validator differs.
        schemas = validation._schema_set(None).schemas
        registry = Registry().with_resources(
            (uri, Resource.from_contents(schema)) for uri, schema in schemas.items()
        )
        self.validators = {}
        for uri, schema in schemas.items():
            cls = jsonschema.validators.validator_for(schema)
            self.validators[uri] = cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)

    def check(self, item: dict[str, Any], uris: list[str]) -> None:
        for uri in uris:
            error = jsonschema.exceptions.best_match(self.validators[uri].iter_errors(item))
            if error is not None:
                raise StacValidationError(f"{item['id']} fails {uri} at {error.json_path}")

    def validate(self, item: dict[str, Any]) -> None:
        stac_dict = json.loads(json.dumps(item))
        self.check(
            stac_dict, [validation._core_schema_uri(stac_dict), *stac_dict["stac_extensions"]]
        )


def ms_per_call(function: Callable[[], object], count: int) -> float:
    function()  # compiled validators and caches are built once per process: not per item
    start = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000, help="validations timed, ours")
    parser.add_argument("--baseline-items", type=int, default=500, help="python-jsonschema")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        item = mammals_item(Path(tmp))
    uris = [validation._core_schema_uri(item), *item["stac_extensions"]]
    baseline = PythonJsonschema()

    broken = json.loads(json.dumps(item))
    broken["properties"]["proj:code"] = 4326
    for name, validate in (("ours", stac.validate), ("python-jsonschema", baseline.validate)):
        validate(item)
        try:
            validate(broken)
        except StacValidationError:
            pass
        else:
            raise SystemExit(f"{name} accepted an item with a numeric proj:code")

    start = time.perf_counter()
    validation._validator.cache_clear()
    validation._schema_set.cache_clear()
    stac.validate(item)
    first_ms = (time.perf_counter() - start) * 1000

    ours = ms_per_call(lambda: stac.validate(item), args.items)
    theirs = ms_per_call(lambda: baseline.validate(item), args.baseline_items)

    def check_ours() -> None:
        for uri in uris:
            validation._check_against(item, uri, None)

    ours_checks = ms_per_call(check_ours, args.items)
    theirs_checks = ms_per_call(lambda: baseline.check(item, uris), args.baseline_items)

    print(f"item {item['id']}: schemas {', '.join(u.split('/')[-3] for u in uris)}")
    print(f"first validation in a process (load + compile the schemas): {first_ms:.1f} ms")
    print("| | ours (ms/item) | python-jsonschema (ms/item) | ratio |")
    print("|---|---|---|---|")
    print(f"| validate(item dict) | {ours:.4f} | {theirs:.3f} | {theirs / ours:.0f}x |")
    print(
        f"| schema checks only | {ours_checks:.4f} | {theirs_checks:.3f} "
        f"| {theirs_checks / ours_checks:.0f}x |"
    )
    items = 229_050
    print(
        f"{items:,} items: ours {ours * items / 1000:.0f} s, baseline {theirs * items / 1000:.0f} s"
    )
    write_result(
        "bench_validation",
        title="STAC validation of a global-mammals item",
        goal="validation a small share of publishing (no fixed ratio; ours against the former "
        "python-jsonschema validator on the same schemas).",
        baseline="python-jsonschema on the same compiled schemas",
        columns=["", "ours (ms/item)", "python-jsonschema (ms/item)", "speed-up"],
        rows=[
            ["validate(item dict)", ours, theirs, theirs / ours],
            ["schema checks only", ours_checks, theirs_checks, theirs_checks / ours_checks],
            [f"{items:,} items (s)", ours * items / 1000, theirs * items / 1000, None],
        ],
        ratio=ours / theirs,
        met=None,
        figures={"first_validation_ms": first_ms, "items": args.items},
    )


if __name__ == "__main__":
    main()
