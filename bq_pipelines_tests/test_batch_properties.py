"""Properties of partition batching (hypothesis): whatever partitions are asked for, the runs
cover each exactly once, in order, in contiguous ranges of at most the batch size (one value of
the static dimension each), and no more runs than the ranges need."""

from __future__ import annotations

import math

import dagster as dg
from hypothesis import given, settings
from hypothesis import strategies as st

from bq_pipelines.runtime.launch import partition_batches

PROPERTIES = settings(max_examples=100, deadline=None, database=None)
STATIC = dg.StaticPartitionsDefinition([f"p{i:02d}" for i in range(30)])
MONTHS = dg.MonthlyPartitionsDefinition(start_date="2001-01-01", end_date="2003-01-01")
VARIABLES = ["pr", "tas", "tasmax"]
MULTI = dg.MultiPartitionsDefinition(
    {"time": MONTHS, "variable": dg.StaticPartitionsDefinition(VARIABLES)}
)
BATCH_SIZES = st.integers(min_value=1, max_value=12)


def runs_of_consecutive(positions: list[int]) -> list[int]:
    """Lengths of the maximal runs of consecutive integers in sorted `positions`."""
    lengths: list[int] = []
    for index, position in enumerate(positions):
        if index and position == positions[index - 1] + 1:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


@PROPERTIES
@given(
    wanted=st.sets(st.sampled_from(STATIC.get_partition_keys())),
    batch_size=BATCH_SIZES,
)
def test_static_batches_cover_every_key_once_in_contiguous_ranges(
    wanted: set[str], batch_size: int
):
    keys = STATIC.get_partition_keys()
    batches = partition_batches(STATIC, sorted(wanted, reverse=True), batch_size)

    assert [key for batch in batches for key in batch] == [k for k in keys if k in wanted]
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        first = keys.index(batch[0])
        assert batch == keys[first : first + len(batch)]  # a range of the definition
    positions = sorted(keys.index(key) for key in wanted)
    expected_runs = sum(math.ceil(n / batch_size) for n in runs_of_consecutive(positions))
    assert len(batches) == expected_runs


@PROPERTIES
@given(
    wanted=st.sets(st.sampled_from(MULTI.get_partition_keys()), max_size=40),
    batch_size=BATCH_SIZES,
)
def test_multi_partition_batches_are_ranges_of_months_of_one_variable(
    wanted: set[str], batch_size: int
):
    months = MONTHS.get_partition_keys()
    batches = partition_batches(MULTI, list(wanted), batch_size)

    flat = [key for batch in batches for key in batch]
    assert sorted(flat) == sorted(wanted) and len(flat) == len(set(flat))
    runs = 0
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        parts = [MULTI.get_partition_key_from_str(k).keys_by_dimension for k in batch]
        assert len({p["variable"] for p in parts}) == 1
        first = months.index(parts[0]["time"])
        assert [p["time"] for p in parts] == months[first : first + len(batch)]
    for variable in VARIABLES:
        positions = sorted(
            months.index(p["time"])
            for p in (MULTI.get_partition_key_from_str(k).keys_by_dimension for k in wanted)
            if p["variable"] == variable
        )
        runs += sum(math.ceil(n / batch_size) for n in runs_of_consecutive(positions))
    assert len(batches) == runs
