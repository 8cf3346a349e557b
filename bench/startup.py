"""Start-up of `fer annotate` in a new process: imports, the model, and the time to the first sample.

    python bench/startup.py CLIP MODEL [--repeat 5] [--engine auto] [-- more annotate options]

Runs `fer annotate CLIP --out ... --model MODEL --device cpu` REPEAT times, each in a new process
(the backbone's converted model cached by a first, untimed run), and prints the median and range
of, in seconds from the process's first line:

- producer_start_s, first_sample_s: the producer began; its first sample (a frame decoded, its
  faces found and cut);
- model_start_s, model_ready_s: the network's build began; it ended (with OpenVINO, compiled);
- first_rows_s: the first clip's rows handed to the writer;
- exit_s: the whole process, launch to exit (measured by this script);
- cpu_s: the process's CPU time, user and system (what the run costs the machine).

Then one `python -X importtime` run of the same command: the imports before the first sample,
the slowest top-level packages first. `--against DIR` alternates each run with the same command
on another checkout of fer (`git worktree add DIR COMMIT`, or `git archive`), so that the two
share the machine's load; both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The child: time marks from the first line, through hooks installed as the modules load.
CHILD = r"""
import builtins, json, sys, time
T0 = time.perf_counter()
marks = {}
real_import = builtins.__import__

def mark(name):
    marks.setdefault(name, time.perf_counter() - T0)

def wrap_stages(stages):
    samples = stages.Producer.samples
    def timed(self, *a, **k):
        for i, item in enumerate(samples(self, *a, **k)):
            if i == 1:
                mark("first_sample_s")
            yield item
    stages.Producer.samples = timed
    hand_on = stages.Labeler._hand_on
    def handed(self, *a, **k):
        mark("first_rows_s")
        return hand_on(self, *a, **k)
    stages.Labeler._hand_on = handed
    run = stages.Producer.run
    def running(self, *a, **k):
        mark("producer_start_s")
        return run(self, *a, **k)
    stages.Producer.run = running

def wrap_model(model):
    for name in ("load_placed", "build_placed"):
        if hasattr(model, name):
            setattr(model, name, marking(getattr(model, name)))

def marking(load):
    def loaded(*a, **k):
        mark("model_start_s")
        out = load(*a, **k)
        mark("model_ready_s")
        return out
    return loaded

hooks = {("fercli.job.stages", "Labeler"): wrap_stages, ("fercli.nets.model", "load_placed"): wrap_model}

def hooked(name, *a, **k):
    module = real_import(name, *a, **k)
    for key in [(m, attr) for m, attr in hooks if hasattr(sys.modules.get(m), attr)]:
        hooks.pop(key)(sys.modules[key[0]])  # once the module has run to its end
    return module

builtins.__import__ = hooked
from fercli.cli import run
from fercli.core.runtime import exit_now
code = run(sys.argv[1:])  # as fercli.cli.main, the marks printed before its quick exit
print("STARTUP " + json.dumps(marks), file=sys.stderr, flush=True)
exit_now(code)
"""


def env_for(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def run_once(clip: str, model: str, extra: list[str], out: Path, env: dict) -> dict:
    args = ["annotate", clip, "--out", str(out), "--model", model, "--device", "cpu", "--overwrite", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # From the output's folder: `python -c` puts the working directory first on sys.path.
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"fer annotate failed:\n{done.stderr[-2000:]}")
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("STARTUP "))
    return {**json.loads(line.removeprefix("STARTUP ")), "exit_s": wall, "cpu_s": cpu}


def import_times(clip: str, model: str, extra: list[str], out: Path, env: dict, top: int = 12) -> list:
    args = ["annotate", clip, "--out", str(out), "--model", model, "--device", "cpu", "--overwrite", *extra]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fercli.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=out.parent,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative_us, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # a top-level import: its cumulative time is its whole cost
            rows.append((int(cumulative_us) / 1e6, name.strip()))
    total = sum(s for s, _ in rows)
    return [(round(total, 3), "all top-level imports")] + [
        (round(s, 3), n) for s, n in sorted(rows, reverse=True)[:top]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip")
    parser.add_argument("model")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--against", type=Path, help="another checkout of fer to alternate with")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.clip, args.model = str(Path(args.clip).resolve()), str(Path(args.model).resolve())
    extra = ["--engine", args.engine, *argv[cut + 1 :]]  # more `fer annotate` options after --
    roots = {"this checkout": ROOT} | ({f"against {args.against}": args.against} if args.against else {})
    runs: dict[str, list] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory(prefix="fer-startup-") as tmp:
        out = Path(tmp) / "r.parquet"
        for root in roots.values():  # converts and caches the backbone, warms the page cache
            run_once(args.clip, args.model, extra, out, env_for(root))
        for _ in range(args.repeat):
            for name, root in roots.items():
                runs[name].append(run_once(args.clip, args.model, extra, out, env_for(root)))
        imports = import_times(args.clip, args.model, extra, out, env_for(ROOT))
    print(f"fer annotate {args.clip} --model {args.model} --device cpu {' '.join(extra)}; {args.repeat} runs each")
    for name, done in runs.items():
        print(name)
        keys = (
            "producer_start_s",
            "first_sample_s",
            "model_start_s",
            "model_ready_s",
            "first_rows_s",
            "exit_s",
            "cpu_s",
        )
        for key in keys:
            values = [r[key] for r in done if key in r]
            if values:
                median = statistics.median(values)
                print(f"  {key:15} median {median:6.2f}  range {min(values):.2f}-{max(values):.2f}")
    print("imports of this checkout (python -X importtime, one run, cumulative s):")
    for seconds, name in imports:
        print(f"  {seconds:7.3f}  {name}")


if __name__ == "__main__":
    main()
