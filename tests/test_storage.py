"""Storage confinement and atomic writes."""

import os
from pathlib import Path

import pytest

from batchgrid.errors import InputError, PathOutsideRootsError
from batchgrid.storage import confine, read_range, write_atomic


def test_confine_when_path_escapes_with_dotdot_refuses_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()

    with pytest.raises(PathOutsideRootsError, match="BATCHGRID_STORAGE_ROOTS"):
        confine(str(root / ".." / "secret.txt"), [str(root)])


def test_confine_when_symlink_points_outside_refuses_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc")

    with pytest.raises(PathOutsideRootsError):
        confine(str(root / "link" / "passwd"), [str(root)])


def test_confine_when_root_is_a_prefix_of_a_sibling_refuses_the_sibling(
    tmp_path: Path,
) -> None:
    with pytest.raises(PathOutsideRootsError):
        confine(str(tmp_path / "data-other" / "x"), [str(tmp_path / "data")])


def test_confine_when_path_is_inside_returns_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()

    assert confine(str(tmp_path / "a" / "." / "x.csv"), [str(tmp_path)]) == str(
        tmp_path / "a" / "x.csv"
    )


@pytest.mark.parametrize("url", ["http://example.com/x.csv", "ftp://host/x"])
def test_confine_when_scheme_is_unsupported_names_the_scheme(url: str) -> None:
    with pytest.raises(InputError, match="unsupported URL scheme"):
        confine(url, ["/"])


def test_confine_when_object_store_url_has_dotdot_refuses_it() -> None:
    with pytest.raises(PathOutsideRootsError):
        confine("s3://bucket/data/../private/x", ["s3://bucket/data"])


def test_write_atomic_when_target_exists_replaces_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.bin"

    write_atomic(str(target), b"first")
    write_atomic(str(target), b"second")

    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["x.bin"]


def test_read_range_when_file_shrank_says_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"0123456789")

    assert read_range(str(path), 2, 5) == b"234"
    with pytest.raises(InputError, match="changed"):
        read_range(str(path), 5, 20)


def test_write_atomic_when_umask_is_usual_output_is_readable_by_others(
    tmp_path: Path,
) -> None:
    target = tmp_path / "x.png"

    write_atomic(str(target), b"data")

    assert target.stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize(
    "url", ["file:///data/x::memory://y", "s3://bucket/data/x?versionId=1"]
)
def test_confine_when_url_chains_or_has_parameters_refuses_it(url: str) -> None:
    with pytest.raises(InputError, match="not allowed"):
        confine(url, ["/data", "s3://bucket/data"])
