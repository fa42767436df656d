"""What a user installs: the version, the license, and extras free of contributor tools."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import sagaz

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_version_is_the_installed_distributions() -> None:
    assert sagaz.__version__ == importlib.metadata.version("sagaz")
    assert "__version__" in sagaz.__all__


def test_version_of_a_source_tree_that_is_not_installed() -> None:
    hide_the_distribution = (
        "import importlib.metadata as m\n"
        "found = m.version\n"
        "def version(name):\n"
        "    if name == 'sagaz':\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    return found(name)\n"
        "m.version = version\n"
        "import sagaz\n"
        "print(sagaz.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", hide_the_distribution],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout
    assert out == "0+unknown\n"


def test_the_license_file_is_the_one_pyproject_declares() -> None:
    project = pyproject()
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the sagaz authors\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_no_published_extra_carries_contributor_tools() -> None:
    tools = {"ruff", "mypy", "faststream"}  # linters (.ci/run), a benchmark baseline
    for extra, requirements in pyproject()["optional-dependencies"].items():
        names = {req.split("[")[0].split(">")[0].split("=")[0].strip() for req in requirements}
        assert not names & tools, f"extra {extra!r} carries {sorted(names & tools)}"
