"""The module map ARCHITECTURE.md draws, checked on the source: folders are layers, data flows one way.

A module is placed by the folder it lives in: each folder may import the folders `LAYERS` gives it
and no other, so a new module obeys its layer's rules without being listed anywhere.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "fercli"
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"
# Folder -> the folders its modules may import (besides its own). No arrow runs back up.
LAYERS = {
    "core": set(),
    "media": {"core"},
    "nets": {"core", "media"},
    "tables": {"core", "media"},
    "datasets": {"core", "media", "nets", "tables"},
    "job": {"core", "media", "nets", "tables"},
    "scoring": {"core", "datasets", "tables"},
    "views": {"core", "media", "tables", "scoring"},
    "training": {"core", "nets", "tables", "datasets", "job", "scoring", "views"},
}
# The `fer` command's modules beside fercli/cli.py, which assembles them into one app.
CLI_PARTS = {
    "cli_common",
    "cli_display",
    "cli_annotate",
    "cli_train",
    "cli_benchmark",
    "cli_calibrate",
    "cli_views",
    "cli_weights",
}
PROGRAM = {"cli", "doctor"} | CLI_PARTS  # fercli/*.py: the program on top, which may import any folder


def module_files() -> dict[str, Path]:
    """'folder.module' (or 'module' at the top) -> file, for every module but packages' __init__."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name != "__init__":
            found[".".join(rel.parts)] = path
    return found


FILES = module_files()
MODULES = sorted(FILES)


def folder(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


def resolve(module: str, node: ast.ImportFrom) -> list[tuple[str, list[str]]]:
    """The fercli modules an import-from statement in `module` reads, each with the names taken."""
    if node.level:
        base = ["fercli", *module.split(".")[:-1]]
        base = base[: len(base) - (node.level - 1)]
        dotted = ".".join(base + ([node.module] if node.module else []))
    else:
        dotted = node.module or ""
    if not dotted.startswith("fercli"):
        return []
    key = dotted.removeprefix("fercli").lstrip(".")
    if key in FILES:
        return [(key, [a.name for a in node.names])]
    inside = [f"{key}.{a.name}" if key else a.name for a in node.names]  # from .pkg import module
    return [(m, []) for m in inside if m in FILES]


def imports(module: str) -> list[tuple[str, list[str]]]:
    """(fercli module, names taken from it) for every import in `module`, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(FILES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            found += resolve(module, node)
        elif isinstance(node, ast.Import):
            found += [
                (a.name.removeprefix("fercli."), []) for a in node.names if a.name.removeprefix("fercli.") in FILES
            ]
    return found


GRAPH = {m: {dep for dep, _ in imports(m)} - {m} for m in MODULES}


def test_every_module_lives_in_a_layer_or_is_the_program():
    strays = [m for m in MODULES if folder(m) not in LAYERS and m not in PROGRAM]
    assert not strays, (
        f"{strays}: place each in a folder of LAYERS (or, for a new layer, add it there and to ARCHITECTURE.md)"
    )
    assert all((PACKAGE / f / "__init__.py").is_file() for f in LAYERS)


@pytest.mark.parametrize("module", [m for m in MODULES if folder(m)])
def test_a_module_imports_only_its_own_folder_and_the_layers_below(module):
    allowed = LAYERS[folder(module)] | {folder(module)}
    wrong = sorted(dep for dep in GRAPH[module] if folder(dep) not in allowed)
    assert not wrong, f"{module} ({folder(module)}/) imports {wrong}; {folder(module)}/ may import {sorted(allowed)}"


def test_the_layers_form_no_cycle_and_every_allowed_arrow_is_used():
    used = {(folder(m), folder(d)) for m in MODULES for d in GRAPH[m] if folder(m) and folder(m) != folder(d)}
    assert used == {(a, b) for a, deps in LAYERS.items() for b in deps}, "LAYERS and the code disagree"
    order = list(LAYERS)  # written bottom up: every arrow points to an earlier folder
    assert all(order.index(b) < order.index(a) for a, deps in LAYERS.items() for b in deps)


def test_the_drawn_graph_is_the_layers():
    block = ARCHITECTURE.read_text().split("<!-- layers -->")[1].split("```")[1]  # the mermaid drawing
    drawn = {f: set() for f in LAYERS}
    for a, b in re.findall(r"^\s*(\w+)/ --> (\w+)/\s*$", block, re.M):
        drawn.setdefault(a, set()).add(b)
    assert drawn == LAYERS


def test_the_map_and_the_folders_agree():
    """ARCHITECTURE.md has a section per folder (`## \\`media/\\``) naming each of its modules in bold."""
    text = ARCHITECTURE.read_text()
    mapped = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        m = re.match(r"`(\w*)/?`", section)
        if m:
            names = re.findall(r"\*\*`(\w+)`\*\*", section)
            mapped |= {(f"{m.group(1)}.{n}" if m.group(1) != "fercli" else n): None for n in names}
    assert sorted(mapped) == MODULES


def test_nothing_imports_the_program():
    wrong = sorted((m, d) for m in MODULES for d in GRAPH[m] if d in PROGRAM and m not in PROGRAM)
    assert not wrong, wrong


# Modules tested through another module's tests, and where.
TESTED_IN = {
    "job.contract": "test_pipeline.py",
    "job.stages": "test_pipeline.py",
    "scoring.compare": "test_loop.py",
    "training.options": "test_loop.py",
    "training.resume": "test_loop.py",
    "training.records": "test_loop.py",
    "training.calibrate": "test_loop.py",
    **{part: "test_cli.py" for part in CLI_PARTS},  # the `fer` command, run whole
}


@pytest.mark.parametrize("module", MODULES)
def test_tests_mirror_the_modules(module):
    tests = Path(__file__).parent
    mirror = tests / TESTED_IN.get(module, f"test_{module.split('.')[-1]}.py")
    assert mirror.is_file(), f"{module} has no {mirror.name}"


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


def test_schedules_use_the_stages_and_never_each_other():
    assert "job.stages" in GRAPH["job.schedules"] and "job.stages" in GRAPH["job.cluster"]
    for schedule in ("job.schedules", "job.cluster"):  # one feed loop, typed events: no loop of their own
        assert "feed" in {n for dep, names in imports(schedule) if dep == "job.events" for n in names}
    assert not set(GRAPH["job.events"]), "the contract imports nothing of fercli"
    assert "job.cluster" not in GRAPH["job.schedules"] and "job.schedules" not in GRAPH["job.cluster"]
    assert "job.pipeline" not in GRAPH["job.stages"] | GRAPH["job.schedules"] | GRAPH["job.cluster"]


def test_a_name_becomes_a_network_one_way():
    assert "nets.weights" in GRAPH["nets.checkpoints"] and "nets.checkpoints" in GRAPH["nets.model"]
    assert (
        not {"nets.checkpoints", "nets.model"} & GRAPH["nets.weights"] and "nets.model" not in GRAPH["nets.checkpoints"]
    )
    assert "nets.model" not in GRAPH["nets.engines"]  # the torch backbone to convert comes in as a callable


# Each rule has one home (ARCHITECTURE.md, "Each rule has one home"): the constants and functions
# that make it are defined there and nowhere else, so a second copy that could drift is found here.
CONSTANT_HOMES = {
    "TIME_EPS": "tables.rows",
    "DIMENSIONS": "core.labels",
    "EXPRESSIONS": "core.labels",
    "LABEL_MIN": "core.labels",
    "LABEL_MAX": "core.labels",
    "NUM_CLASSES": "core.labels",
    "MAX_TIMESTAMP": "media.decode",
    "MAX_HOLD_S": "media.decode",
    "IMAGE_EXTENSIONS": "media.inputs",
    "ERRORS_COLUMNS": "tables.writers",
    "RESUME_KEYS": "tables.writers",
    "CUT_DISTANCE": "media.people",
    "SAME_PERSON": "media.people",
    "ABAW_SCALE": "datasets.affwild",
    "MODEL_KEYS": "tables.intervals",
    "INTERVAL_COLUMNS": "tables.writers",
}
FUNCTION_HOMES = {
    "second_of": "tables.rows",
    "n_seconds": "tables.rows",
    "fill_index": "tables.rows",
    "fill_window": "tables.rows",
    "follow": "tables.rows",
    "to_class": "core.labels",
    "decode_logits": "core.labels",
    "sample_sources": "media.decode",
    "frame_numbers": "media.decode",
    "sample_count": "media.decode",
    "first_line": "core.errors",
    "typed_line": "core.errors",
    "atomic_write": "core.files",
    "read_table": "tables.writers",
    "check_keys": "tables.writers",
    "read_errors": "tables.writers",
    "check_table": "tables.writers",
    "errors_path": "tables.writers",
    "find_errors": "tables.writers",
    "group_tracks": "media.people",
    "appearance": "media.people",
    "crop": "media.faces",
    "clip_under": "media.inputs",
    "engine_target": "nets.engines",
    "resolve_device": "core.devices",
    "resolve_precision": "core.devices",
    "synchronize": "core.devices",
    "score_tables": "scoring.metrics",
    "write_scores": "views.plots",
    "write_metrics": "scoring.metrics",
    "logits_spread": "core.labels",
    "difficulty": "tables.intervals",
    "check_calibration": "tables.intervals",
    "conformal_quantile": "scoring.calibration",
    "resolve_decoder": "core.devices",
    "crop_region": "media.faces",
    "frame_detections": "media.faces",
    "face_pixels": "media.people",
    "input_taps": "media.blazeface",
    "crop_batch": "media.torchframes",
    "yuv420_to_rgb": "media.nvdec",
}


def definitions(module: str) -> tuple[set[str], set[str]]:
    """Names a module assigns at its top level, and functions it defines anywhere."""
    tree = ast.parse(FILES[module].read_text())
    assigned = {
        t.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    for node in tree.body:  # A, B = 1, 2
        if isinstance(node, ast.Assign):
            assigned |= {
                e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)
            }
    functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return assigned, functions


@pytest.mark.parametrize("module", MODULES)
def test_each_rule_is_defined_only_in_its_home(module):
    assigned, functions = definitions(module)
    strays = [f"constant {n} (home: {h})" for n, h in CONSTANT_HOMES.items() if n in assigned and module != h]
    strays += [f"function {n} (home: {h})" for n, h in FUNCTION_HOMES.items() if n in functions and module != h]
    assert not strays, f"{module} defines {strays}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "core.errors"])
def test_one_line_errors_are_made_by_errors_only(module):
    source = FILES[module].read_text()
    cuts = [p for p in ("splitlines()[0]", 'splitlines() or [""])[0]') if p in source]
    assert not cuts, f"{module} cuts an error to its first line itself ({cuts}): use errors.first_line"


def test_every_home_exists():
    for name, home in {**CONSTANT_HOMES, **FUNCTION_HOMES}.items():
        assigned, functions = definitions(home)
        assert name in assigned | functions, f"{name} is not in {home}"


def test_names_the_readmes_document_load_from_their_paths():
    import fercli
    import fercli.training
    from fercli.training import loop

    assert fercli.training.train is loop.train is fercli.train and fercli.training.TrainOptions is loop.TrainOptions
    assert callable(fercli.annotate) and callable(fercli.evaluate) and callable(fercli.read_table)


# One home by value, whatever the name: a constant's value (a string, or a collection) or a
# literal run of several strings (column names, suffixes) written out in two modules is a rule
# with two homes. Numbers are compared by name (HEAD_BATCH twice): a bare 1 or 0.2 is no evidence
# of a shared rule.
def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def value_homes() -> dict:
    """A repeated value -> the modules that write it."""
    found: dict = {}
    for module in MODULES:
        tree = ast.parse(FILES[module].read_text())
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper() and getattr(node, "value", None) is not None:
                    value = _literal(node.value)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        found.setdefault(("constant", t.id), set()).add(module)
                    elif isinstance(value, (str, tuple, list, frozenset, set, dict)) and value:
                        found.setdefault(("value", repr(value)), set()).add(module)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
                if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                    found.setdefault(("strings", tuple(e.value for e in node.elts)), set()).add(module)
    return {key: sorted(mods) for key, mods in found.items() if len(mods) > 1}


def test_no_rule_has_two_homes_by_value():
    twice = value_homes()
    assert not twice, "define each once and import it from its home:\n" + "\n".join(
        f"{k}: {m}" for k, m in twice.items()
    )
