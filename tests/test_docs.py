"""The README and the documentation site: the site builds in strict mode (and strict mode catches what
it should), the command reference is today's `--help`, and the README's run command annotates the
example clip shipped in examples/ on a fresh copy, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git_hash_object

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_CHARS = 15_000  # a page a newcomer reads in five minutes; the rest lives on the site
# What a fresh clone runs before fer in the README's run command; this environment is that already.
INSTALL_STEPS = ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -c constraints.txt -e ."]
RUN_TIMEOUT_S = 300  # one annotate or report of a 6 s clip; minutes only on a machine shared by many runs


def readme_command(marker: str) -> str:
    """The line after the code fence below `<!-- marker -->`, read as .ci/run reads the test command."""
    lines = README.read_text(encoding="utf-8").splitlines()
    at = lines.index(f"<!-- {marker} -->")
    assert lines[at + 1].startswith("```"), f"README: no code block under <!-- {marker} -->"
    return lines[at + 2]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("material", reason="the docs extra is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a warning of ours
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(config),
        "--site-dir",
        str(site),
    ]
    return subprocess.run(
        command, check=False, cwd=config.parent, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


# ---------------------------------------------------------------- README


def test_the_readme_is_short_and_keeps_its_command_blocks():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= MAX_README_CHARS, f"README.md has {len(text):,} characters: move detail to docs/"
    run = readme_command("run-command").split(" && ")
    assert run[: len(INSTALL_STEPS)] == INSTALL_STEPS and run[len(INSTALL_STEPS)].startswith("fer annotate examples/")
    # .ci/run installs what the test command names: the extras the tests need, this file's included.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test = readme_command("test-command")
    named = re.search(r'-e "\.\[([\w,]+)\]"', test)
    assert named and {"test", "docs"} <= set(named[1].split(",")) <= set(extras), test
    assert test.endswith("python -m pytest -q")


def test_the_readmes_links_into_the_docs_lead_to_pages():
    targets = re.findall(r"\]\((docs/[^)#\s]+)", README.read_text(encoding="utf-8"))
    assert targets, "the README links into docs/"
    assert [t for t in targets if not (ROOT / t).is_file()] == []


# ---------------------------------------------------------------- the site


def test_the_site_builds_in_strict_mode(tmp_path):
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "commands" / "index.html").is_file()
    assert (tmp_path / "site" / "report.png").is_file()  # the pictures beside the pages come along


def test_strict_mode_fails_on_a_broken_link_a_missing_heading_and_a_page_left_out(tmp_path):
    # mkdocs alone only notes the last two; mkdocs.yml's `validation` makes them warnings, which
    # --strict turns into a failed build. The project's own settings, on three pages made to break.
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md) and [a heading](b.md#no-such-heading)\n")
    (docs / "b.md").write_text("# B\n\n## A heading\n")
    (docs / "orphan.md").write_text("# Not in the nav\n")
    config |= {"docs_dir": str(docs), "nav": [{"Home": "index.md"}, {"B": "b.md"}]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3, result.stderr
    assert "missing.md" in warnings[1] + warnings[2] and "#no-such-heading" in warnings[1] + warnings[2]
    assert "orphan.md" in result.stderr and 'not included in the "nav"' in warnings[0]


def test_the_command_reference_is_todays_help():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_commands
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert gen_commands.PAGE.read_text(encoding="utf-8") == gen_commands.generate(), (
        "docs/commands.md is out of date: run `python docs/gen_commands.py`"
    )


def test_the_api_page_names_every_public_name_and_option():
    import fercli
    from fercli.job.contract import AnnotateOptions

    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert [n for n in fercli.__all__ if f"fercli.{n}" not in page] == []
    assert [f.name for f in dataclasses.fields(AnnotateOptions) if f"| `{f.name}` |" not in page] == []


# ---------------------------------------------------------------- the example, as a new user runs it


def test_the_example_files_are_tracked_by_git():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    for name in ("examples/astronaut.mp4", "examples/make_example.py"):
        tracked = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--error-unmatch", name], check=False, capture_output=True
        )
        assert tracked.returncode == 0, f"{name} is not committed (or .gitignore hides it)"


@pytest.fixture
def hsemotion_form(tmp_path) -> Path:
    """A file of the form of HSEmotion's enet_b0_8_va_mtl.pt: a whole timm tf_efficientnet_b0 with a
    10-output head saved by torch.save, with random weights."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path / "hsemotion" / "enet_b0_8_va_mtl.pt"
    path.parent.mkdir()
    torch.save(timm.create_model("tf_efficientnet_b0", num_classes=10).eval(), path)
    return path


def test_the_readme_run_command_annotates_the_example_clip(tmp_path, server, hsemotion_form):
    """The README's run command after its install steps, word for word, on a fresh copy of
    examples/ with an empty weights cache.

    HSEmotion's real weights cannot be downloaded here (no internet), and nothing may stand in for
    them under their git blob id. So the download is fer's own, through a registry file of one's own
    ($FER_REGISTRY, as a lab would mirror the file): the shipped `hsemotion` entry with its URLs on a
    loopback server, the first answering 404 and the mirror serving a file of HSEmotion's form, and
    its git blob id that file's. What the clip shows is known without the model: the camera of
    examples/make_example.py has her face in view in seconds 0-2 and 4-5, not in second 3."""
    import pandas as pd

    from fercli.nets import weights
    from fercli.tables.writers import read_metadata, read_table

    url, www, requests = server
    shutil.copy(hsemotion_form, www / hsemotion_form.name)
    entry = {**json.loads(weights.REGISTRY_FILE.read_text())["hsemotion"], "git_blob": git_hash_object(hsemotion_form)}
    entry |= {"url": f"{url}/moved/{hsemotion_form.name}", "mirrors": [f"{url}/{hsemotion_form.name}"]}
    (tmp_path / "registry.json").write_text(json.dumps({"hsemotion": entry}))
    work = tmp_path / "clone"
    shutil.copytree(ROOT / "examples", work / "examples")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "FER_CACHE_DIR": str(tmp_path / "cache"),
        "FER_REGISTRY": str(tmp_path / "registry.json"),
    }

    for step in readme_command("run-command").split(" && ")[len(INSTALL_STEPS) :]:
        words = shlex.split(step)
        assert words[0] == "fer", step
        done = subprocess.run(
            [sys.executable, "-m", "fercli.cli", *words[1:]],
            check=False,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert done.returncode == 0, f"{step}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    assert requests == [
        f"/moved/{hsemotion_form.name}",
        f"/{hsemotion_form.name}",
    ]  # the pinned URL failed, the mirror served
    table = read_table(work / "results.parquet")
    assert table["video"].unique().tolist() == ["astronaut.mp4"] and table["second"].tolist() == [0, 1, 2, 3, 4, 5]
    assert table["face"].tolist() == [True, True, True, False, True, True]
    share = table["face_share"].tolist()
    assert share[0] == share[1] == share[5] == 1.0 and share[3] == 0.0 and 0 < share[2] < 1 and 0 < share[4] < 1
    assert table["valence"].isna().tolist() == [False, False, False, True, False, False]
    expressions = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    pd.testing.assert_series_equal(
        table.loc[table["face"], expressions].sum(axis=1),
        pd.Series(1.0, index=[0, 1, 2, 4, 5]),
        check_dtype=False,
        atol=1e-5,
        rtol=0,
    )
    assert (
        read_metadata(work / "results.parquet")["weights_sha256"]
        == hashlib.sha256(hsemotion_form.read_bytes()).hexdigest()
    )
    page = (work / "report" / "index.html").read_text(encoding="utf-8")
    assert "astronaut.mp4" in page and '"../examples/astronaut.mp4"' in page  # the player plays the example
