"""The distribution's name and what a new user's install line relies on."""

from importlib.metadata import distribution
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parents[1]


def test_distribution_is_named_fercli_not_the_unrelated_pypi_fer():
    # `fer` on PyPI is someone else's facial-expression package: installing it would replace ours.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "fercli"
    assert project["scripts"] == {"fer": "fercli.cli:main"}  # the command keeps its short name
    installed = distribution("fercli")
    assert installed.entry_points.select(group="console_scripts", name="fer")


def test_docs_and_hints_install_fercli():
    texts = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "fercli").glob("*.py"))]}
    for path, text in texts.items():
        for wrong in ("pip install fer ", "'fer[", '"fer[', "fer\\\\["):
            assert wrong not in text, f"{path.name} still says {wrong!r}"

