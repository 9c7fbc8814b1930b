"""Broken and unusual inputs at scale, and the resource limits that hold against bombs.

The corpus is made by ``tests/corpus.py`` at test time. Every file ends as an
outcome or a named error; none crashes a worker, hangs a job or spoils the rest.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from batchgrid.errors import InputError, PathOutsideRootsError
from batchgrid.tables import CsvDialect
from tests.conftest import Cluster, assert_matches_reference, pandas_reference
from tests.corpus import (
    png_of_zeros,
    write_csv_corpus,
    write_image_corpus,
    write_slow_pngs,
)
from tests.faultkit import FaultCluster, broker, children, fault_cluster

pytestmark = pytest.mark.integration

#: A corpus job that takes longer than this is taken as hung.
CORPUS_JOB_TIMEOUT_S = 60.0


def test_images_corpus_gives_each_file_an_outcome_or_a_named_error(
    cluster: Cluster, workspace: Path
) -> None:
    expected = write_image_corpus(workspace / "in")

    job_id = cluster.producer.submit_images(
        [str(workspace / "in")], str(workspace / "out")
    )
    record = cluster.wait(job_id, timeout_s=CORPUS_JOB_TIMEOUT_S)

    items = cluster.store.items(job_id)
    got = {name: item.get("error", "ok") for name, item in items.items()}
    assert record.state == "succeeded"
    assert got == expected
    for name, outcome in items.items():
        if "error" in outcome:
            assert name in outcome["message"], outcome
        else:
            with Image.open(workspace / "out" / outcome["output"]) as image:
                assert image.mode == "L"
    assert "animated: first of 3 frames" in items["animated.gif"]["note"]
    with Image.open(workspace / "out" / "palette-transparent.png") as image:
        assert image.getpixel((0, 0)) == 255  # transparent over white


def test_images_folder_with_a_link_out_of_the_roots_is_refused_naming_it(
    cluster: Cluster, workspace: Path, tmp_path: Path
) -> None:
    (workspace / "in").mkdir()
    Image.new("RGB", (8, 8)).save(workspace / "in" / "fine.png")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"outside the storage roots")
    (workspace / "in" / "escapes.jpg").symlink_to(secret)

    with pytest.raises(PathOutsideRootsError, match=r"escapes\.jpg"):
        cluster.producer.submit_images([str(workspace / "in")], str(workspace / "o"))


def test_csv_corpus_gives_each_file_an_answer_or_a_named_error(
    cluster: Cluster, workspace: Path
) -> None:
    corpus = write_csv_corpus(workspace)

    for name, (expectation, read_options) in corpus.items():
        path = workspace / name
        try:
            job_id = cluster.producer.submit_table(
                str(path), by=["k"], values=["v"], chunk_bytes=256
            )
        except InputError as exc:
            assert expectation == "refused", (name, exc)
            assert name in str(exc)
            continue
        record = cluster.wait(job_id, timeout_s=CORPUS_JOB_TIMEOUT_S)
        result = cluster.store.result(job_id)

        if expectation == "failed":
            assert record.state == "failed", name
            assert record.error is not None and name in record.error, record.error
            continue
        assert record.state == "succeeded", (name, record.error)
        assert result is not None
        if expectation == "pandas":
            reference = pandas_reference(path, by=["k"], values=["v"], **read_options)
            assert_matches_reference(result, reference)
        else:
            assert isinstance(expectation, dict)
            for key, want in expectation.items():
                assert result[key] == want, (name, key, result[key])


def test_csv_in_latin_1_read_with_its_encoding_equals_pandas(
    cluster: Cluster, workspace: Path
) -> None:
    write_csv_corpus(workspace)
    path = workspace / "latin-1.csv"

    record = cluster.wait(
        cluster.producer.submit_table(
            str(path),
            by=["k"],
            values=["v"],
            dialect=CsvDialect(encoding="latin-1"),
            chunk_bytes=256,
        )
    )

    result = cluster.store.result(record.id)
    assert record.state == "succeeded" and result is not None
    assert_matches_reference(
        result, pandas_reference(path, by=["k"], values=["v"], encoding="latin-1")
    )


# --- resource limits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """One worker, one pool process: 256 MiB per task, 2 s before the soft limit."""
    root = tmp_path_factory.mktemp("limited")
    with broker("valkey", root / "valkey") as found:
        running = fault_cluster(
            found,
            root,
            max_task_memory_bytes=256 * 2**20,
            soft_time_limit_s=2,
            hard_time_limit_s=4,
            visibility_timeout_s=6,
            image_batch_bytes=2**30,
            image_batch_max_items=32,
        )
        running.add_workers("limited", concurrency=1)
        yield running
        running.stop()


def test_decompression_bomb_under_the_pixel_limit_fails_alone_on_the_memory_limit(
    limited: FaultCluster,
) -> None:
    src = limited.root / "bomb"
    src.mkdir()
    # 8000 x 8000 RGBA: 64 Mpx, under the 100 Mpx pixel limit, but 256 MB decoded.
    (src / "a-bomb.png").write_bytes(png_of_zeros(8000, 8000))
    Image.new("RGB", (64, 48), "navy").save(src / "b-after.png")
    main = limited.groups[0].processes[0].pid
    [pool_process] = children(main)

    record = limited.wait(
        limited.producer.submit_images([str(src)], str(limited.root / "bomb-out"))
    )

    items = limited.store.items(record.id)
    assert record.state == "succeeded" and record.options["tasks"] == 1
    assert items["a-bomb.png"]["error"] == "out_of_memory"
    assert "BATCHGRID_MAX_TASK_MEMORY_BYTES" in items["a-bomb.png"]["message"]
    assert "error" not in items["b-after.png"]  # same task, same process, after it
    assert children(main) == [pool_process]  # the process survived the bomb


def test_batch_past_the_soft_time_limit_marks_the_rest_and_the_job_ends(
    limited: FaultCluster,
) -> None:
    src = limited.root / "slow"
    write_slow_pngs(src, 12)  # about 4.4 s of work in one task, over 2 s
    main = limited.groups[0].processes[0].pid
    [pool_process] = children(main)

    record = limited.wait(
        limited.producer.submit_images([str(src)], str(limited.root / "slow-out"))
    )

    items = limited.store.items(record.id)
    reasons = {item.get("error", "ok") for item in items.values()}
    assert record.state == "succeeded" and record.options["tasks"] == 1
    assert reasons == {"ok", "time_limit"}
    assert items["slow-00.png"].get("error") is None
    assert items["slow-11.png"]["error"] == "time_limit"
    assert children(main) == [pool_process]  # the hard limit never killed it
