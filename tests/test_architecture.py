"""The module map ARCHITECTURE.md describes, checked on the source: data flows one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "fercli"
# Stages import nothing above them (the job, its schedules, the CLI, the tools built on tables).
ABOVE_STAGES = {"pipeline", "stages", "schedules", "cluster", "cli", "benchmark", "evaluate", "training", "report", "export", "render", "plots", "doctor"}
STAGES = ["inputs", "decode", "blazeface", "faces", "people", "model", "windows", "writers", "labels", "files", "errors", "devices", "weights", "checkpoints", "options", "afew", "features", "examples", "splits", "engines"]


def imports(module: str) -> list[tuple[str, list[str]]]:
    """(fercli module, names taken from it) for every import in `module`, function-level ones included."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import a, b
                found.append((node.module.split(".")[0], [a.name for a in node.names]))
            elif node.level == 1:  # from . import x, y
                found += [(a.name, []) for a in node.names]
            elif node.module and node.module.startswith("fercli."):
                found.append((node.module.split(".")[1], [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("fercli.")]
    return [(m, names) for m, names in found if (PACKAGE / f"{m}.py").exists()]


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
GRAPH = {m: {dep for dep, _ in imports(m)} - {m} for m in MODULES}


def test_no_import_cycle_inside_fercli():
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            pytest.fail("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in sorted(GRAPH[m]):
            visit(dep, path + [m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])


@pytest.mark.parametrize("module", MODULES)
def test_no_module_takes_another_modules_private_names(module):
    private = [(dep, n) for dep, names in imports(module) for n in names if n.startswith("_")]
    assert not private, f"{module} imports private names {private}"


@pytest.mark.parametrize("module", [m for m in STAGES if m in MODULES])
def test_stages_import_nothing_above_them(module):
    assert not GRAPH[module] & ABOVE_STAGES, f"{module} imports {sorted(GRAPH[module] & ABOVE_STAGES)}"


def test_schedules_use_the_stages_and_never_each_other():
    assert "stages" in GRAPH["schedules"] and "stages" in GRAPH["cluster"]
    assert "cluster" not in GRAPH["schedules"] and "schedules" not in GRAPH["cluster"]
    assert not {"pipeline"} & (GRAPH["stages"] | GRAPH["schedules"] | GRAPH["cluster"])


def test_a_name_becomes_a_network_one_way():
    assert "weights" in GRAPH["checkpoints"] and "checkpoints" in GRAPH["model"]
    assert not {"checkpoints", "model"} & GRAPH["weights"] and "model" not in GRAPH["checkpoints"]


# Each rule has one home (ARCHITECTURE.md, "Each rule has one home"): the constants and functions
# that make it are defined there and nowhere else, so a second copy that could drift is found here.
CONSTANT_HOMES = {
    "TIME_EPS": "windows", "DIMENSIONS": "labels", "EXPRESSIONS": "labels", "LABEL_MIN": "labels",
    "LABEL_MAX": "labels", "NUM_CLASSES": "labels", "MAX_TIMESTAMP": "decode", "MAX_HOLD_S": "decode",
    "IMAGE_EXTENSIONS": "inputs", "ERRORS_COLUMNS": "writers", "RESUME_KEYS": "writers",
    "CUT_DISTANCE": "people", "SAME_PERSON": "people", "ABAW_SCALE": "affwild",
}  # fmt: skip
FUNCTION_HOMES = {
    "second_of": "windows", "n_seconds": "windows", "fill_index": "windows", "fill_window": "windows",
    "follow": "windows", "to_class": "labels", "decode_logits": "labels", "sample_sources": "decode",
    "sample_count": "decode", "first_line": "errors", "typed_line": "errors", "atomic_write": "files",
    "read_table": "writers", "read_errors": "writers", "check_table": "writers", "errors_path": "writers",
    "find_errors": "writers", "group_tracks": "people", "appearance": "people", "crop": "faces",
    "clip_under": "inputs",
}  # fmt: skip


def definitions(module: str) -> tuple[set[str], set[str]]:
    """Names a module assigns at its top level, and functions it defines anywhere."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    assigned = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    for node in tree.body:  # A, B = 1, 2
        if isinstance(node, ast.Assign):
            assigned |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)}
    functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return assigned, functions


@pytest.mark.parametrize("module", MODULES)
def test_each_rule_is_defined_only_in_its_home(module):
    assigned, functions = definitions(module)
    strays = [f"constant {n} (home: {h})" for n, h in CONSTANT_HOMES.items() if n in assigned and module != h]
    strays += [f"function {n} (home: {h})" for n, h in FUNCTION_HOMES.items() if n in functions and module != h]
    assert not strays, f"{module} defines {strays}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "errors"])
def test_one_line_errors_are_made_by_errors_only(module):
    source = (PACKAGE / f"{module}.py").read_text()
    cuts = [p for p in ("splitlines()[0]", 'splitlines() or [""])[0]') if p in source]
    assert not cuts, f"{module} cuts an error to its first line itself ({cuts}): use errors.first_line"


def test_every_home_exists():
    for name, home in {**CONSTANT_HOMES, **FUNCTION_HOMES}.items():
        assigned, functions = definitions(home)
        assert name in assigned | functions, f"{name} is not in {home}"
