"""Planning jobs: listing images, bases, exclusions and batches; table ranges."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import fsspec
import pytest

from batchgrid import producer
from batchgrid.errors import InputError, PathOutsideRootsError
from batchgrid.producer import batch_images, list_images, plan_images, plan_table
from batchgrid.settings import Settings


def _settings(root: Path) -> Settings:
    return Settings(_env_file=None, storage_roots=[str(root)], broker_url="redis://x")


def test_plan_images_when_output_is_inside_input_leaves_outputs_out(
    tmp_path: Path,
) -> None:
    (tmp_path / "in" / "gray").mkdir(parents=True)
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    (tmp_path / "in" / "gray" / "a.jpg").write_bytes(b"old output")

    plan = plan_images(
        _settings(tmp_path), [str(tmp_path / "in")], str(tmp_path / "in" / "gray")
    )

    assert [name for batch in plan.batches for name in batch.names] == ["a.jpg"]


def test_plan_images_when_input_is_inside_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")

    with pytest.raises(InputError, match="outside the inputs"):
        plan_images(_settings(tmp_path), [str(tmp_path / "in")], str(tmp_path))


def test_plan_images_when_two_inputs_share_an_output_name_names_both(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.gif").write_bytes(b"x")
    (tmp_path / "in" / "x.gif.png").write_bytes(b"x")

    with pytest.raises(InputError, match=r"x\.gif and x\.gif\.png"):
        plan_images(_settings(tmp_path), [str(tmp_path / "in")], str(tmp_path / "out"))


def test_list_images_when_a_literal_name_has_brackets_takes_it_literally(
    tmp_path: Path,
) -> None:
    (tmp_path / "img[1].jpg").write_bytes(b"x")
    (tmp_path / "img1.jpg").write_bytes(b"yy")

    _base, items = list_images([str(tmp_path / "img[1].jpg")], [str(tmp_path)])

    assert items == [("img[1].jpg", 1)]


def test_list_images_when_glob_climbs_with_dotdot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PathOutsideRootsError):
        list_images([str(tmp_path / "*" / ".." / ".." / "*")], [str(tmp_path)])


def test_list_images_on_an_object_store_keeps_the_url_scheme_in_the_base() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/photos/a.jpg", b"a")
    fs.pipe("/bucket/photos/sub/b.jpg", b"bb")

    base, items = list_images(["memory://bucket/photos"], ["memory://bucket"])

    assert base == "memory://bucket/photos"
    assert items == [("a.jpg", 1), ("sub/b.jpg", 2)]


def test_batch_images_splits_by_bytes_and_count() -> None:
    items = [(f"{n}.jpg", 400) for n in range(10)]

    batches = list(batch_images(items, batch_bytes=1000, max_items=3))

    assert [len(batch.names) for batch in batches] == [2, 2, 2, 2, 2]
    assert [n for batch in batches for n in batch.names] == [n for n, _ in items]


def test_plan_images_when_glob_is_relative_lists_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"yy")
    (tmp_path / "c.jpg").write_bytes(b"zzz")
    monkeypatch.chdir(tmp_path)

    plan = plan_images(_settings(tmp_path), ["*.jpg"], "gray")

    assert [name for batch in plan.batches for name in batch.names] == [
        "a.jpg",
        "c.jpg",
    ]
    assert plan.src_base == str(tmp_path)


def test_list_images_when_glob_has_a_folder_matches_only_its_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "x1.jpg").write_bytes(b"x")
    (tmp_path / "in" / "y1.jpg").write_bytes(b"x")
    (tmp_path / "in" / "sub" / "x2.jpg").write_bytes(b"x")

    _base, items = list_images([str(tmp_path / "in" / "x*.jpg")], [str(tmp_path)])

    assert items == [("x1.jpg", 1)]


_PLAN_AS_ANOTHER_USER = """
import os, sys
from batchgrid.errors import InputError
from batchgrid.schemas import TablesRequest, plan_request
from batchgrid.settings import Settings
from batchgrid.storage import filesystem
root = sys.argv[1]
settings = Settings(_env_file=None, storage_roots=[root], broker_url="redis://x")
filesystem(root)  # imported while the interpreter's own files can still be read
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)  # root reads anything: plan as nobody, like a container user
try:
    request = TablesRequest(csv=root + "/locked.csv", by=["a"], values=["b"])
    plan_request(settings, request)
except InputError as exc:
    print("InputError:", exc)
"""


def test_plan_request_when_storage_refuses_the_read_names_the_file() -> None:
    root = Path(tempfile.mkdtemp(prefix="batchgrid-perm-"))
    root.chmod(0o755)
    locked = root / "locked.csv"
    locked.write_text("a,b\nx,1\n")
    locked.chmod(0o000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    try:
        run = subprocess.run(
            [sys.executable, "-c", _PLAN_AS_ANOTHER_USER, str(root)],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            timeout=60,
        )
    finally:
        locked.unlink()
        root.rmdir()

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"InputError: {locked}: storage refused the read")
    assert "Permission denied" in run.stdout


def test_plan_request_when_storage_does_not_answer_is_worth_a_retry() -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    from batchgrid.errors import StorageUnavailableError
    from batchgrid.schemas import TablesRequest, plan_request

    class Unreachable(MemoryFileSystem):  # an object store behind a dead network
        cachable = False

        def exists(self, path: str, **kwargs: object) -> bool:
            raise ConnectionError("connect timeout")

    settings = Settings(
        _env_file=None, storage_roots=["memory://bucket"], broker_url="redis://x"
    )
    request = TablesRequest(csv="memory://bucket/t.csv", by=["a"], values=["b"])
    fsspec.register_implementation("memory", Unreachable, clobber=True)

    try:
        with pytest.raises(StorageUnavailableError, match="try again"):
            plan_request(settings, request)
    finally:
        fsspec.register_implementation("memory", MemoryFileSystem, clobber=True)


@pytest.mark.parametrize(
    ("chunk_bytes", "small_range_bytes", "warned"),
    [
        (16, 1024 * 1024, True),  # many tiny ranges
        (64 * 1024, 1024 * 1024, False),  # few ranges
        (16, 16, False),  # many ranges, none under the size that warns
    ],
)
def test_plan_table_when_ranges_are_tiny_and_many_warns_about_the_unit(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    chunk_bytes: int,
    small_range_bytes: int,
    warned: bool,
) -> None:
    monkeypatch.setattr(producer, "SMALL_RANGE_BYTES", small_range_bytes)
    csv = tmp_path / "t.csv"
    csv.write_text("k,v\n" + "".join(f"g{i % 3},{i}\n" for i in range(3000)))

    plan = plan_table(
        _settings(tmp_path), str(csv), by=["k"], values=["v"], chunk_bytes=chunk_bytes
    )

    many = len(plan.ranges) > producer.SMALL_RANGES_WARN_TASKS
    assert many is (chunk_bytes == 16)
    assert ("in bytes" in caplog.text) is warned
