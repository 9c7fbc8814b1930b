"""Tests for reading CSV headers and planning row-aligned byte ranges."""

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgrid.errors import InputError
from batchgrid.tables import CsvDialect, Header, plan_ranges, read_header

DIALECT = CsvDialect()

#: Characters of fields left unquoted: no delimiter, quote or line break.
PLAIN_CHARS = "ab é"

#: Characters of quoted fields, which may hold anything.
QUOTED_PIECES = ["a", "é", " ", ",", '"', "\n", "\r\n"]


@st.composite
def fields(draw: st.DrawFn) -> tuple[str, str]:
    """Draw one field as (value, CSV text), quoted or not."""
    if draw(st.booleans()):
        value = "".join(draw(st.lists(st.sampled_from(QUOTED_PIECES), max_size=6)))
        return value, '"' + value.replace('"', '""') + '"'
    value = draw(st.text(alphabet=PLAIN_CHARS, max_size=6))
    return value, value


@st.composite
def csv_documents(draw: st.DrawFn) -> tuple[bytes, list[list[str]]]:
    """Draw a CSV file as bytes and the data rows it holds."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    width = draw(st.integers(min_value=2, max_value=4))
    header = [f'"col\n{i}"' if i == 0 else f"c{i}" for i in range(width)]
    rows = draw(st.lists(st.lists(fields(), min_size=width, max_size=width)))
    lines = [",".join(header)] + [",".join(text for _, text in row) for row in rows]
    text = newline.join(lines)
    if draw(st.booleans()):
        text += newline
    return text.encode("utf-8"), [[value for value, _ in row] for row in rows]


def parse_rows(data: bytes) -> list[list[str]]:
    """Parse CSV bytes with Python's csv module."""
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def header_of(content: bytes) -> Header:
    return read_header(io.BytesIO(content), name="t.csv", dialect=DIALECT)


def plan(content: bytes, chunk_bytes: int, block_bytes: int = 1024) -> list:
    header = header_of(content)
    return plan_ranges(
        io.BytesIO(content),
        start=header.end_offset,
        size=len(content),
        chunk_bytes=chunk_bytes,
        dialect=DIALECT,
        block_bytes=block_bytes,
    )


@settings(max_examples=200, deadline=None)
@given(document=csv_documents(), data=st.data())
def test_plan_ranges_any_chunking_rows_equal_whole_file(
    document: tuple[bytes, list[list[str]]], data: st.DataObject
) -> None:
    content, rows = document
    chunk_bytes = data.draw(st.integers(min_value=1, max_value=len(content)))
    block_bytes = data.draw(st.integers(min_value=1, max_value=64))

    header = read_header(
        io.BytesIO(content), name="t.csv", dialect=DIALECT, block_bytes=block_bytes
    )
    ranges = plan_ranges(
        io.BytesIO(content),
        start=header.end_offset,
        size=len(content),
        chunk_bytes=chunk_bytes,
        dialect=DIALECT,
        block_bytes=block_bytes,
    )

    assert header.names[0] == "col\n0"
    assert parse_rows(content[header.end_offset :]) == rows
    assert [r.index for r in ranges] == list(range(len(ranges)))
    assert [r.start for r in ranges] == [header.end_offset, *(r.end for r in ranges)][
        : len(ranges)
    ]
    assert (ranges[-1].end if ranges else header.end_offset) == len(content)
    assert all(r.end - r.start >= chunk_bytes for r in ranges[:-1])
    assert all(r.start < r.end for r in ranges)
    assert [r.quoted for r in ranges] == [
        b'"' in content[r.start : r.end] for r in ranges
    ]
    pieces = [row for r in ranges for row in parse_rows(content[r.start : r.end])]
    assert pieces == rows


def reference_ends(
    content: bytes, start: int, chunk_bytes: int
) -> list[tuple[int, int, bool]]:
    """Plan byte by byte: a range ends at the first even-parity newline past chunk."""
    ends: list[tuple[int, int, bool]] = []
    odd = quoted = False
    range_start = start
    for pos in range(start, len(content)):
        is_quote = content[pos : pos + 1] == b'"'
        odd ^= is_quote
        quoted = quoted or is_quote
        row_end = content[pos : pos + 1] == b"\n" and not odd
        if row_end and pos + 1 < len(content) and pos + 1 - range_start >= chunk_bytes:
            ends.append((range_start, pos + 1, quoted))
            range_start, quoted = pos + 1, False
    if range_start < len(content):
        ends.append((range_start, len(content), quoted))
    return ends


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.sampled_from(["x,1", '"a\nb\nc\nd",2', '"say ""hi""",3', '"\n\n\n\n\n",4']),
        max_size=30,
    ),
    data=st.data(),
)
def test_plan_ranges_any_blocks_same_ranges_as_byte_by_byte_reference(
    rows: list[str], data: st.DataObject
) -> None:
    content = ("k,v\n" + "".join(row + "\n" for row in rows)).encode()
    chunk_bytes = data.draw(st.integers(min_value=1, max_value=len(content)))
    block_bytes = data.draw(st.integers(min_value=1, max_value=40))

    ranges = plan(content, chunk_bytes=chunk_bytes, block_bytes=block_bytes)

    assert [(r.start, r.end, r.quoted) for r in ranges] == reference_ends(
        content, 4, chunk_bytes
    )


@pytest.mark.parametrize("block_bytes", [1, 7, 16, 64, 1 << 20])
@pytest.mark.parametrize("chunk_bytes", [1, 50, 100, 150])
def test_plan_ranges_quote_free_blocks_inside_quoted_field_do_not_split_it(
    block_bytes: int, chunk_bytes: int
) -> None:
    # Every block inside the field but the first holds newlines and no quote: the
    # quote-free fast path must carry the odd parity through them, not end a range.
    field = '"' + "line\n" * 40 + '"'
    content = f"k,v\n{field},1\nw,2\n".encode()

    ranges = plan(content, chunk_bytes=chunk_bytes, block_bytes=block_bytes)

    assert [content[r.start : r.end] for r in ranges] == [
        f"{field},1\n".encode(),
        b"w,2\n",
    ]
    assert [r.quoted for r in ranges] == [True, False]


def test_plan_ranges_crlf_file_boundaries_after_newline() -> None:
    content = b"a,b\r\n1,2\r\n3,4\r\n5,6\r\n"

    ranges = plan(content, chunk_bytes=1)

    assert [(r.start, r.end) for r in ranges] == [(5, 10), (10, 15), (15, 20)]


def test_plan_ranges_newline_inside_quotes_stays_in_one_range() -> None:
    content = b'k,v\n"x\ny\nz",1\nw,2\n'

    ranges = plan(content, chunk_bytes=1, block_bytes=3)

    assert [content[r.start : r.end] for r in ranges] == [b'"x\ny\nz",1\n', b"w,2\n"]
    assert [r.quoted for r in ranges] == [True, False]


def test_plan_ranges_doubled_quotes_keep_parity() -> None:
    content = b'k,v\n"say ""hi""\nthere",1\nw,2\n'

    ranges = plan(content, chunk_bytes=1)

    assert [content[r.start : r.end] for r in ranges] == [
        b'"say ""hi""\nthere",1\n',
        b"w,2\n",
    ]


def test_plan_ranges_large_chunk_one_range_to_end_of_file() -> None:
    content = b"k,v\nx,1\ny,2"

    ranges = plan(content, chunk_bytes=10**9)

    assert [(r.start, r.end, r.quoted) for r in ranges] == [(4, 11, False)]


def test_plan_ranges_header_only_file_no_ranges() -> None:
    for content in (b"k,v", b"k,v\n", b"k,v\r\n"):
        header = header_of(content)

        ranges = plan(content, chunk_bytes=4)

        assert header == Header(names=["k", "v"], end_offset=len(content))
        assert ranges == []


def test_plan_ranges_chunk_bytes_zero_raises_input_error() -> None:
    with pytest.raises(InputError, match="chunk_bytes"):
        plan(b"k,v\nx,1\n", chunk_bytes=0)


def test_plan_ranges_file_shorter_than_size_raises_input_error() -> None:
    with pytest.raises(InputError, match="plan again"):
        plan_ranges(
            io.BytesIO(b"k,v\nx,1\n"), start=4, size=100, chunk_bytes=1, dialect=DIALECT
        )


def test_read_header_bom_and_spaces_names_stripped() -> None:
    content = b"\xef\xbb\xbf a , b \r\n1,2\r\n"

    header = header_of(content)

    assert header == Header(names=["a", "b"], end_offset=12)


def test_read_header_quoted_newline_header_ends_after_closing_quote() -> None:
    content = b'"first\nname",b\nx,1\n'

    header = header_of(content)

    assert header == Header(names=["first\nname", "b"], end_offset=15)


def test_read_header_semicolon_dialect_splits_on_semicolon() -> None:
    dialect = CsvDialect(delimiter=";", quotechar="'")
    content = b"'a;1';b\nx;1\n"

    header = read_header(io.BytesIO(content), name="t.csv", dialect=dialect)

    assert header.names == ["a;1", "b"]


def test_read_header_empty_file_raises_input_error() -> None:
    with pytest.raises(InputError) as caught:
        header_of(b"")

    assert str(caught.value) == "t.csv: the file is empty; a CSV needs a header row"


def test_read_header_blank_first_line_raises_input_error() -> None:
    with pytest.raises(InputError, match="header row is empty"):
        header_of(b"\nx,1\n")


def test_read_header_unclosed_quote_raises_input_error() -> None:
    with pytest.raises(InputError, match="unclosed"):
        header_of(b'"a,b\n1,2\n')


def test_read_header_utf16_file_raises_input_error() -> None:
    content = "a,b\n1,2\n".encode("utf-16")

    with pytest.raises(InputError, match="UTF-16"):
        header_of(content)


def test_read_header_bare_carriage_returns_raises_input_error() -> None:
    with pytest.raises(InputError, match="bare"):
        header_of(b"a,b\r1,2\r")


def test_csv_dialect_utf16_encoding_raises_input_error_naming_fix() -> None:
    with pytest.raises(InputError, match="transcode the file to UTF-8"):
        CsvDialect(encoding="utf-16")


def test_csv_dialect_same_delimiter_and_quote_raises_input_error() -> None:
    with pytest.raises(InputError, match="different"):
        CsvDialect(delimiter='"')


@pytest.mark.parametrize("encoding", ["no-such-codec", "utf\x008"])
def test_csv_dialect_unknown_encoding_raises_input_error(encoding: str) -> None:
    # Python's codec lookup raises ValueError, not LookupError, for a NUL (found by
    # the API fuzz test as a 500).
    with pytest.raises(InputError, match="unknown encoding"):
        CsvDialect(encoding=encoding)
