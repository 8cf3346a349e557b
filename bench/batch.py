"""Batch scale: N short clips and 10% broken files through `fer annotate`, timed, a worker killed if asked.

    python bench/batch.py WORK N [--kill worker|ray-decode|ray-model] [--kill-after-clips K] -- FER_ARGS

    python bench/batch.py /tmp/batch 1000 -- --workers 1
    python bench/batch.py /tmp/batch 1000 --kill worker --kill-after-clips 300 -- --workers 1
    python bench/batch.py /tmp/batch 1000 --kill ray-model --kill-after-clips 300 -- --ray local

Makes, once, under WORK: one 2 s 160x120 H.264 clip with a face (tests/media.py), copied N times
(`clips-N/c0000.mp4` ...), N/10 broken files beside them (`b000.mp4` ...: in turn empty, text,
and the clip cut to a third), and `lstm.pt`, a random EfficientNet + LSTM of the default config
with hidden 32 (fercli.nets.checkpoints.save_checkpoint), as docs/performance.md's batch figures use. Then runs

    fer annotate WORK/clips-N --out WORK/runs/<name>/r.parquet --model WORK/lstm.pt FER_ARGS

in a subprocess, and reads /proc every POLL_S while it runs:

- the fer process's peak resident set (VmHWM, kept by the kernel, so no peak falls between polls);
- the largest peak of any other process of its tree (worker processes, Ray's daemons and workers);
- the tree's memory at its largest poll: the sum of each process's PSS (proportional set size:
  a page shared by k processes, torch's libraries or Ray's object store, counts 1/k in each), so
  the total is what the run holds, not its processes' RSS added up with the shared pages again.

With --kill, once K clips are finished (`r.parquet.parts/` holds K parts) it SIGKILLs one process
of the tree: `worker`, a decoding worker process (`--workers N`); `ray-decode` / `ray-model`, a
Ray worker running a decode task / a model actor. Then it checks, and says, that:

- the run ended by itself (exit status 1: the broken files failed), within TIMEOUT_S;
- every good clip has rows, and they equal, to 1e-5, those of one copy annotated alone with the
  default schedule (every copy is the same clip, so that is a clean run's table for each);
- no (video, second) row is there twice;
- the errors file (`r.parquet.errors.csv`) names every broken file exactly once, and nothing else.

Prints one line of JSON, also kept as WORK/runs/<name>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's fercli, and the tests' media maker
FER = str(Path(sys.executable).with_name("fer"))  # the environment's fer, run with this checkout on its path
POLL_S = 0.5  # s between reads of /proc: VmHWM keeps the peaks; PSS is sampled
TIMEOUT_S = 3 * 3600  # a run still going after this long is hung (1,000 clips take ~5 min on 2 cores)
BROKEN_SHARE = 10  # one broken file per this many good clips
ATOL = 1e-5  # float columns: as the tests compare Ray's table with the local one
KILL_TARGETS = {  # what --kill looks for in a process's command line
    "worker": "spawn_main",  # multiprocessing's spawned worker
    "ray-decode": "_decode",  # proctitle ray::...Map(_decode)
    "ray-model": "_ModelActor",  # proctitle ray::MapWorker(MapBatches(_ModelActor))
}


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    folder, broken = make_media(work, args.clips)
    reference = reference_table(work)
    name = "-".join([str(args.clips), *([args.kill] if args.kill else []), *(a.strip("-") for a in args.fer_args)])
    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out = run_dir / "r.parquet"
    command = [FER, "annotate", str(folder), "--out", str(out), "--model", str(work / "lstm.pt"), *args.fer_args]
    measured = run_measured(command, out, args.kill, args.kill_after_clips, run_dir / "fer.log")
    summary = {"clips": args.clips, "broken": len(broken), "command": " ".join(["fer", *command[1:]]), **measured}
    summary["clips_per_s"] = round(args.clips / measured["wall_s"], 2)
    summary["checks"] = check(out, args.clips, broken, reference, measured["exit_status"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", help="folder for the clips, the checkpoint and the runs (kept between runs)")
    parser.add_argument("clips", type=int, help="good clips (N/10 broken files are added)")
    parser.add_argument("--kill", choices=sorted(KILL_TARGETS), help="SIGKILL one such process mid-run")
    parser.add_argument(
        "--kill-after-clips", type=int, default=None, help="when this many clips are finished (default N/3)"
    )
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.fer_args = argv[cut + 1 :]  # after --: fer annotate's schedule options
    if args.kill_after_clips is None:
        args.kill_after_clips = max(1, args.clips // 3)
    return args


# -- media --------------------------------------------------------------------------------------


def make_media(work: Path, n: int) -> tuple[Path, list[str]]:
    """WORK/clips-N with N copies of the clip and N/10 broken files; the broken files' names."""
    import media

    work.mkdir(parents=True, exist_ok=True)
    clip = work / "clip.mp4"
    if not clip.exists():
        media.make_clip(clip, 2.0, 25, (160, 120), media.still_face(20, 10, 100))
    if not (work / "lstm.pt").exists():
        checkpoint(work / "lstm.pt")
    folder = work / f"clips-{n}"
    broken = [f"b{k:03d}.mp4" for k in range(max(1, n // BROKEN_SHARE))]
    if not folder.exists():
        staging = work / f"clips-{n}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for k in range(n):
            shutil.copy(clip, staging / f"c{k:04d}.mp4")
        data = clip.read_bytes()
        kinds = [b"", b"this is text, not a movie\n" * 20, data[: len(data) // 3]]
        for k, name in enumerate(broken):
            (staging / name).write_bytes(kinds[k % len(kinds)])
        staging.rename(folder)
    return folder, broken


def checkpoint(path: Path) -> None:
    import torch

    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import EfficientNetLSTM, ModelConfig

    torch.manual_seed(0)
    save_checkpoint(EfficientNetLSTM(ModelConfig(hidden=32)).eval(), path)


def reference_table(work: Path):
    """One copy of the clip annotated alone with the default schedule: every good clip's rows."""
    out = work / "reference.parquet"
    if not out.exists():
        subprocess.run(
            [FER, "annotate", str(work / "clip.mp4"), "--out", str(out), "--model", str(work / "lstm.pt")],
            check=True,
            capture_output=True,
            env=fer_env(),
        )
    from fercli.tables.writers import read_table

    return read_table(out).drop(columns="video")


def fer_env() -> dict:
    """This checkout's fercli for fer and its workers, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# -- the run, measured --------------------------------------------------------------------------


def run_measured(command: list[str], out: Path, kill: str | None, kill_after: int, log: Path) -> dict:
    parts = out.with_name(out.name + ".parts")
    with open(log, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=fer_env())
        peaks: dict[int, int] = {}  # pid -> VmHWM kB, last seen
        tree_pss = 0
        killed = None
        while process.poll() is None:
            if time.perf_counter() - start > TIMEOUT_S:
                process.kill()
                break
            tree = descendants(process.pid)
            for pid in [process.pid, *tree]:
                peaks[pid] = max(peaks.get(pid, 0), status_kb(pid, "VmHWM"))
            tree_pss = max(tree_pss, sum(pss_kb(pid) for pid in [process.pid, *tree]))
            if kill and killed is None and finished(parts) >= kill_after:
                killed = kill_one(tree, kill, time.perf_counter() - start, finished(parts))
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    children = {pid: kb for pid, kb in peaks.items() if pid != process.pid}
    return {
        "exit_status": process.returncode,
        "wall_s": round(wall, 1),
        "main_peak_rss_gb": round(peaks.get(process.pid, 0) / 1e6, 2),
        "largest_child_peak_rss_gb": round(max(children.values(), default=0) / 1e6, 2),
        "tree_peak_pss_gb": round(tree_pss / 1e6, 2),
        "processes_seen": len(peaks),
        "killed": killed,
    }


def finished(parts: Path) -> int:
    try:
        return sum(1 for p in parts.iterdir() if p.suffix == ".parquet")
    except FileNotFoundError:
        return 0


def kill_one(tree: list[int], kill: str, at_s: float, done: int) -> dict | None:
    """SIGKILL the first process of the tree whose command line holds KILL_TARGETS[kill]."""
    for pid in tree:
        what = cmdline(pid)
        if KILL_TARGETS[kill] in what:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            return {"pid": pid, "what": what[:80], "at_s": round(at_s, 1), "clips_done": done}
    return None  # none running now: tried again at the next poll


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            ppid = parent(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# -- checks -------------------------------------------------------------------------------------


def check(out: Path, n: int, broken: list[str], reference, exit_status: int | None) -> dict:
    import pandas as pd

    from fercli.tables.writers import errors_path, read_table

    checks = {"ended_by_itself": exit_status == 1}
    table = read_table(out) if out.exists() else pd.DataFrame(columns=["video", "second"])
    good = {f"c{k:04d}.mp4" for k in range(n)}
    checks["every_good_clip_has_rows"] = set(table.video) == good
    checks["no_duplicated_rows"] = not table.duplicated(["video", "second"]).any()
    checks["good_rows_equal_a_clean_run"] = all(
        same(rows.drop(columns="video"), reference) for _, rows in table.groupby("video")
    )
    errors = pd.read_csv(errors_path(out)) if errors_path(out).exists() else pd.DataFrame(columns=["video"])
    checks["each_broken_file_named_once"] = sorted(errors.video) == sorted(broken)
    checks["all"] = all(checks.values())
    return checks


def same(a, b) -> bool:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), atol=ATOL, check_exact=False)
    except AssertionError:
        return False
    return True


if __name__ == "__main__":
    main()
