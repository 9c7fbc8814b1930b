"""The kind demo end to end: cluster, images, install, autoscaling, timeline.

Runs the Makefile targets a newcomer runs (``kind-up``, ``images``, ``deploy``,
``autoscale-demo``) against a real kind cluster, and is skipped, with the reason,
when none can be reached: it needs ``kind`` and a container engine on PATH and
``KUBECONFIG`` set. ``make test-kind`` runs it alone. A cluster it had to create
is deleted at the end; one that was there already is left as it was.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.kind

ROOT = Path(__file__).resolve().parent.parent
#: The cluster `make kind-up` makes (KIND_CLUSTER in the Makefile).
CLUSTER = "batchgrid"
#: The whole demo (cluster creation, two image builds, installs) stays under this.
STEP_TIMEOUT_S = 1800


def _missing() -> str | None:
    """Why no kind cluster can be used here, or None when one can."""
    if not os.environ.get("KUBECONFIG"):
        return "KUBECONFIG is not set"
    if shutil.which("kind") is None:
        return "kind is not on PATH"
    engine = os.environ.get("CONTAINER_ENGINE", "docker")
    if shutil.which(engine) is None:
        return f"{engine} (CONTAINER_ENGINE) is not on PATH"
    probe = subprocess.run([engine, "info"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"`{engine} info` failed: no container engine is running"
    return None


def _make(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )


@pytest.fixture(scope="module", autouse=True)
def _kind_cluster() -> Iterator[None]:
    """Skip without kind; delete the cluster afterwards if this test made it."""
    reason = _missing()
    if reason:
        print(f"kind demo skipped: {reason}")
        pytest.skip(f"no kind cluster can be used: {reason}")
    clusters = subprocess.run(
        ["kind", "get", "clusters"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    yield
    if CLUSTER not in clusters:
        _make("kind-down")


def test_kind_demo_scales_workers_up_and_back_and_draws_the_timeline() -> None:
    for target in ("kind-up", "images", "deploy"):
        done = _make(target)
        assert done.returncode == 0, f"make {target}:\n{done.stdout}\n{done.stderr}"

    demo = _make("autoscale-demo")

    assert demo.returncode == 0, demo.stdout + demo.stderr
    with Image.open(ROOT / "k8s/out/autoscale.png") as png:
        assert png.format == "PNG"
    # The loadgen report ends with what it submitted and how long jobs took.
    assert "p95" in (ROOT / "k8s/out/loadgen.log").read_text()
