"""Tests for aggregating ranges and merging partials, checked against pandas."""

import io
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batchgrid.errors import ColumnNotFoundError, InputError
from batchgrid.tables import (
    CsvDialect,
    Header,
    aggregate_range,
    check_columns,
    merge_partials,
    plan_ranges,
    read_header,
)

DIALECT = CsvDialect()

#: Group keys with skewed weights: null spellings, a quoted comma, a leading zero.
CARRIERS = {"UA": 40, "AA": 25, "x, y": 10, "007": 8, "NA": 4, "": 3, "Zé": 10}
ORIGINS = ["JFK", "LGA", "EWR"]


def write_flights(path: Path, rows: int, seed: int, encoding: str = "utf-8") -> None:
    """Write a CSV of random flights with some empty and non-numeric values."""
    rng = random.Random(seed)
    lines = ["carrier,origin,amount,delay"]
    for _ in range(rows):
        carrier = rng.choices(list(CARRIERS), weights=list(CARRIERS.values()))[0]
        carrier = f'"{carrier}"' if "," in carrier or rng.random() < 0.1 else carrier
        amount = f"{rng.uniform(0, 5000):.2f}"
        roll = rng.random()
        if roll < 0.05:
            amount = ""
        elif roll < 0.08:
            amount = rng.choice(["n/a?", "abc", "NULL", "None"])
        delay = str(rng.randint(-30, 300)) if rng.random() > 0.1 else "NA"
        lines.append(f"{carrier},{rng.choice(ORIGINS)},{amount},{delay}")
    newline = rng.choice(["\n", "\r\n"])
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode())


def aggregate_file(
    path: Path,
    *,
    by: Sequence[str],
    values: Sequence[str],
    chunk_bytes: int,
    dialect: CsvDialect = DIALECT,
) -> dict[str, Any]:
    """Plan, aggregate each range through JSON, and merge, as the job does."""
    with path.open("rb") as f:
        header = read_header(f, name=path.name, dialect=dialect)
        check_columns(header, name=path.name, by=by, values=values)
        size = path.stat().st_size
        ranges = plan_ranges(
            f,
            start=header.end_offset,
            size=size,
            chunk_bytes=chunk_bytes,
            dialect=dialect,
        )
    content = path.read_bytes()
    partials = [
        aggregate_range(
            content[r.start : r.end],
            names=header.names,
            by=by,
            values=values,
            dialect=dialect,
            quoted=r.quoted,
        )
        for r in ranges
    ]
    partials = [json.loads(json.dumps(p, allow_nan=False)) for p in partials]
    return merge_partials(partials, by=by, values=values)


def pandas_stats(
    path: Path, *, by: Sequence[str], values: Sequence[str], encoding: str = "utf-8"
) -> dict[tuple[Any, ...], dict[str, dict[str, Any]]]:
    """Compute the expected stats with pandas over the whole file."""
    frame = pd.read_csv(
        path, dtype={key: str for key in by}, keep_default_na=True, encoding=encoding
    )
    expected: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for key, group in frame.groupby(list(by), dropna=False):
        stats = {}
        for value in values:
            raw = group[value]
            number = pd.to_numeric(raw, errors="coerce")
            stats[value] = {
                "count": int(number.count()),
                "sum": float(number.sum()),
                "mean": float(number.mean()),
                "min": float(number.min()),
                "max": float(number.max()),
                "missing": int(raw.isna().sum()),
                "unparseable": int((raw.notna() & number.isna()).sum()),
            }
        expected[tuple(None if pd.isna(k) else k for k in key)] = stats
    return expected


def assert_matches_pandas(
    result: dict[str, Any], expected: dict[tuple[Any, ...], dict[str, dict[str, Any]]]
) -> None:
    """Assert exact count, min, max and sum and mean within 1e-9 relative."""
    got = {tuple(group["key"]): group["stats"] for group in result["groups"]}
    assert got.keys() == expected.keys()
    for key, stats in expected.items():
        for value, want in stats.items():
            have = got[key][value]
            assert have["count"] == want["count"], (key, value)
            assert have["missing"] == want["missing"], (key, value)
            assert have["unparseable"] == want["unparseable"], (key, value)
            if want["count"] == 0:
                assert have["sum"] is have["mean"] is have["min"] is have["max"] is None
                continue
            assert have["min"] == want["min"], (key, value)
            assert have["max"] == want["max"], (key, value)
            assert have["sum"] == pytest.approx(want["sum"], rel=1e-9)
            assert have["mean"] == pytest.approx(want["mean"], rel=1e-9)


def test_merge_partials_unequal_chunks_mean_is_total_over_count() -> None:
    chunks = [b"a,10\n", b"a,0\na,0\na,0\na,\n"]

    partials = [
        aggregate_range(
            chunk,
            names=["k", "v"],
            by=["k"],
            values=["v"],
            dialect=DIALECT,
            quoted=False,
        )
        for chunk in chunks
    ]
    result = merge_partials(partials, by=["k"], values=["v"])

    assert result["rows"] == 5
    assert result["groups"] == [
        {
            "key": ["a"],
            "stats": {
                "v": {
                    "count": 4,
                    "sum": 10.0,
                    "mean": 2.5,
                    "min": 0.0,
                    "max": 10.0,
                    "missing": 1,
                    "unparseable": 0,
                }
            },
        }
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 97, 1500, 10**9])
def test_merge_partials_any_chunking_matches_pandas(
    tmp_path: Path, seed: int, chunk_bytes: int
) -> None:
    path = tmp_path / "flights.csv"
    write_flights(path, rows=300, seed=seed)
    by, values = ["carrier"], ["amount"]

    result = aggregate_file(path, by=by, values=values, chunk_bytes=chunk_bytes)

    expected = pandas_stats(path, by=by, values=values)
    assert (None,) in expected
    assert result["rows"] == 300
    assert result["malformed_rows"] == 0
    assert_matches_pandas(result, expected)


@pytest.mark.parametrize("chunk_bytes", [1, 211, 10**9])
def test_merge_partials_two_keys_two_values_matches_pandas(
    tmp_path: Path, chunk_bytes: int
) -> None:
    path = tmp_path / "flights.csv"
    write_flights(path, rows=400, seed=7)
    by, values = ["carrier", "origin"], ["amount", "delay"]

    result = aggregate_file(path, by=by, values=values, chunk_bytes=chunk_bytes)

    assert result["by"] == by
    assert result["values"] == values
    assert_matches_pandas(result, pandas_stats(path, by=by, values=values))


def test_merge_partials_latin1_file_matches_pandas(tmp_path: Path) -> None:
    path = tmp_path / "flights.csv"
    write_flights(path, rows=200, seed=3, encoding="latin-1")
    by, values = ["carrier"], ["amount"]

    result = aggregate_file(
        path,
        by=by,
        values=values,
        chunk_bytes=300,
        dialect=CsvDialect(encoding="latin-1"),
    )

    assert ["Zé"] in [group["key"] for group in result["groups"]]
    assert_matches_pandas(
        result, pandas_stats(path, by=by, values=values, encoding="latin-1")
    )


def test_merge_partials_keys_sorted_with_none_last() -> None:
    data = b"b,1\n,2\na,3\nNA,4\n"

    partial = aggregate_range(
        data, names=["k", "v"], by=["k"], values=["v"], dialect=DIALECT, quoted=False
    )
    result = merge_partials([partial], by=["k"], values=["v"])

    assert [group["key"] for group in result["groups"]] == [["a"], ["b"], [None]]
    assert result["groups"][2]["stats"]["v"]["count"] == 2


def test_merge_partials_samples_capped_at_five() -> None:
    partial = aggregate_range(
        b"a,1\n" + b"b,2,3\n" * 4,
        names=["k", "v"],
        by=["k"],
        values=["v"],
        dialect=DIALECT,
        quoted=False,
    )

    result = merge_partials([partial, partial], by=["k"], values=["v"])

    assert result["malformed_rows"] == 8
    assert len(result["malformed_samples"]) == 5


def test_aggregate_range_ragged_rows_skipped_counted_and_sampled() -> None:
    data = b"a,1\nb,2,3\nc\na,4\n"

    partial = aggregate_range(
        data, names=["k", "v"], by=["k"], values=["v"], dialect=DIALECT, quoted=False
    )

    assert partial["rows"] == 2
    assert partial["malformed_rows"] == 2
    assert partial["malformed_samples"] == [
        {"text": "b,2,3", "reason": "expected 2 fields, found 3"},
        {"text": "c", "reason": "expected 2 fields, found 1"},
    ]
    assert partial["groups"] == [[["a"], {"v": [2, 5.0, 1.0, 4.0, 0, 0]}]]


def test_aggregate_range_ragged_row_with_text_values_still_skipped() -> None:
    data = b"a,1\nb,2,3\na,abc\n"

    partial = aggregate_range(
        data, names=["k", "v"], by=["k"], values=["v"], dialect=DIALECT, quoted=False
    )

    assert partial["malformed_rows"] == 1
    assert partial["groups"] == [[["a"], {"v": [1, 1.0, 1.0, 1.0, 0, 1]}]]


def test_aggregate_range_non_finite_values_counted_unparseable() -> None:
    data = b"a,inf\na,-Infinity\na,NAN\na,2.5\na,None\n"

    partial = aggregate_range(
        data, names=["k", "v"], by=["k"], values=["v"], dialect=DIALECT, quoted=False
    )

    assert partial["groups"] == [[["a"], {"v": [1, 2.5, 2.5, 2.5, 1, 3]}]]


def test_aggregate_range_keys_read_as_text_keep_leading_zeros() -> None:
    data = b"007,1\n7,2\n"

    partial = aggregate_range(
        data, names=["k", "v"], by=["k"], values=["v"], dialect=DIALECT, quoted=False
    )

    assert sorted(group[0][0] for group in partial["groups"]) == ["007", "7"]


def test_aggregate_range_only_blank_lines_empty_partial() -> None:
    for data in (b"", b"\n\r\n"):
        partial = aggregate_range(
            data,
            names=["k", "v"],
            by=["k"],
            values=["v"],
            dialect=DIALECT,
            quoted=False,
        )

        assert partial == {
            "rows": 0,
            "malformed_rows": 0,
            "malformed_samples": [],
            "groups": [],
        }


def test_aggregate_range_partial_round_trips_through_json() -> None:
    data = b'"x\ny",1.25\nz,\nz,abc\n,2\n'

    partial = aggregate_range(
        data, names=["k", "v"], by=["k"], values=["v"], dialect=DIALECT, quoted=True
    )

    assert json.loads(json.dumps(partial, allow_nan=False)) == partial
    assert [["x\ny"], {"v": [1, 1.25, 1.25, 1.25, 0, 0]}] in partial["groups"]
    assert [["z"], {"v": [0, None, None, None, 1, 1]}] in partial["groups"]


def test_aggregate_range_invalid_utf8_raises_input_error() -> None:
    with pytest.raises(InputError, match="encoding"):
        aggregate_range(
            b"caf\xe9,1\n",
            names=["k", "v"],
            by=["k"],
            values=["v"],
            dialect=DIALECT,
            quoted=False,
        )


def test_aggregate_range_unknown_column_raises_column_not_found() -> None:
    with pytest.raises(ColumnNotFoundError, match="no column 'w'"):
        aggregate_range(
            b"a,1\n",
            names=["k", "v"],
            by=["k"],
            values=["w"],
            dialect=DIALECT,
            quoted=False,
        )


def test_check_columns_missing_column_lists_columns_found() -> None:
    header = Header(names=["year", "month", "carrier", "arr_delay"], end_offset=0)

    with pytest.raises(ColumnNotFoundError) as caught:
        check_columns(header, name="flights.csv", by=["carier"], values=["arr_delay"])

    assert str(caught.value).startswith(
        "flights.csv: no column 'carier'; "
        "columns found: year, month, carrier, arr_delay"
    )
    assert "did you mean 'carier' → 'carrier'" in str(caught.value)


@pytest.mark.parametrize(
    ("header_line", "delimiter", "likely"), [("k,v", ";", ","), ("k;v", ",", ";")]
)
def test_check_columns_when_the_header_is_one_column_names_the_likely_delimiter(
    header_line: str, delimiter: str, likely: str
) -> None:
    header = Header(names=[header_line], end_offset=0)

    with pytest.raises(ColumnNotFoundError) as caught:
        check_columns(header, name="t.csv", by=["k"], values=["v"], delimiter=delimiter)

    assert f"looks {likely!r}-separated" in str(caught.value)


def test_check_columns_when_one_quoted_column_holds_the_delimiter_gives_no_hint() -> (
    None
):
    header = Header(names=["amount, usd"], end_offset=0)

    with pytest.raises(ColumnNotFoundError) as caught:
        check_columns(header, name="t.csv", by=["k"], values=["v"], delimiter=",")

    assert "separated" not in str(caught.value)


@pytest.mark.parametrize(
    ("by", "values", "message"),
    [
        ([], ["v"], "no group-by column"),
        (["k"], [], "no value column"),
        (["k"], ["k"], "both as group-by key and as value"),
        (["k", "k"], ["v"], "named twice"),
    ],
)
def test_check_columns_bad_request_raises_input_error(
    by: list[str], values: list[str], message: str
) -> None:
    header = Header(names=["k", "v"], end_offset=0)

    with pytest.raises(InputError, match=message):
        check_columns(header, name="t.csv", by=by, values=values)


def test_check_columns_duplicate_header_column_raises_input_error() -> None:
    header = Header(names=["k", "v", "v"], end_offset=0)

    with pytest.raises(InputError, match="more than once"):
        check_columns(header, name="t.csv", by=["k"], values=["v"])


def test_read_header_bom_with_latin1_encoding_raises_input_error() -> None:
    f = io.BytesIO(b"\xef\xbb\xbfk,v\n")

    with pytest.raises(InputError, match="use encoding 'utf-8'"):
        read_header(f, name="t.csv", dialect=CsvDialect(encoding="latin-1"))


def test_merge_partials_sum_uses_fsum_exactly() -> None:
    partials = [
        {
            "rows": 1,
            "malformed_rows": 0,
            "malformed_samples": [],
            "groups": [[["a"], {"v": [1, big, big, big, 0, 0]}]],
        }
        for big in (1e16, 1.0, -1e16)
    ]

    result = merge_partials(partials, by=["k"], values=["v"])

    assert result["groups"][0]["stats"]["v"]["sum"] == 1.0
    assert math.isclose(result["groups"][0]["stats"]["v"]["mean"], 1 / 3)
