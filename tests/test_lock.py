"""The images install from requirements.lock: it must pin what pyproject.toml asks."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
#: The extras the images carry (the Makefile's `lock` target names the same).
IMAGE_EXTRAS = ("s3",)


def _pins() -> dict[str, Version]:
    text = (ROOT / "requirements.lock").read_text()
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M)
    return {canonicalize_name(name): Version(version) for name, version in found}


def test_lock_pins_every_image_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pins = _pins()

    problems = []
    for line in wanted:
        requirement = Requirement(line)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or pinned not in requirement.specifier:
            problems.append(f"{line}: locked at {pinned}")

    assert problems == [], "run `make lock`: " + "; ".join(problems)


def test_lock_gives_every_pin_a_hash() -> None:
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", text, flags=re.M)[1:]

    unhashed = [block.split()[0] for block in blocks if "--hash=sha256:" not in block]

    assert blocks and unhashed == []
