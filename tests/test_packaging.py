"""pyproject.toml declares what the code needs at run time, pinned to what setup installs."""
from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
DEPS = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]


def test_runtime_data_packages_are_declared():
    names = {r.name.lower() for r in DEPS}
    assert "timm" in names  # plugin/taxonomy/imagenet.py reads timm's ImageNet class files
    assert "hypothesis" in {r.name.lower() for r in DEV}


@pytest.mark.parametrize("req", DEPS + DEV, ids=str)
def test_declared_versions_are_the_installed_ones(req):
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        pytest.fail(f"{req.name} is declared but not installed: run ./scripts/setup.sh")
    assert req.specifier.contains(installed, prereleases=True), f"{req} but {installed} is installed"
