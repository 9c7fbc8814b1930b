"""Each module exports deliberately: ``__all__`` lists what exists, nothing more."""

import importlib
import pkgutil

import pytest

import batchgrid
from batchgrid import errors

MODULES = sorted(
    name
    for _, name, _ in pkgutil.iter_modules(batchgrid.__path__, "batchgrid.")
    if name not in ("batchgrid.__main__", "batchgrid.worker")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_module_all_names_exist_and_are_unique(module_name: str) -> None:
    module = importlib.import_module(module_name)

    exported = module.__all__

    assert len(exported) == len(set(exported))
    assert [name for name in exported if not hasattr(module, name)] == []


def test_package_exports_every_error() -> None:
    assert set(errors.__all__) <= set(batchgrid.__all__)
