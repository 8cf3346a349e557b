"""Ray worker processes that kill themselves on a chosen clip, for tests/test_cluster.py.

On Ray the driver hears of a clip only once it is done, so a test cannot kill the worker that is
on it from outside, as tests/test_schedules.py does with worker processes: the worker does it
itself, on the clip, as a decoder crashing on a hostile file would. `install` is the test Ray
session's `worker_process_setup_hook` and runs in every worker process; it does nothing until a
test writes a plan:

    plan(folder, video="c2.mp4", stage="decode", deaths=1)

Then the first `deaths` workers to take that clip in that stage ("decode": the CPU task's
`clip_samples`; "model": the model actor's call) SIGKILL themselves, and later ones go on. Each
death first claims a file `death-<n>` in the folder (created exclusively, so two workers cannot
both claim one), which is also how a test counts the deaths.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

FAULTS_ENV = "FER_TEST_FAULTS"  # the folder of the plan and the death files, set in the workers' env
PLAN = "plan.json"
STAGES = ("decode", "model")


def runtime_env(folder: Path) -> dict:
    """A Ray `runtime_env` whose workers run `install` and can import it and fercli.

    The workers get the tests folder and the checkout that holds this file on their path (CI
    runs from a clean clone anywhere), before whatever PYTHONPATH they would have had.
    """
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests), str(tests.parent), "${PYTHONPATH}"])
    return {
        "worker_process_setup_hook": f"{__name__}.install",
        "env_vars": {"PYTHONPATH": path, FAULTS_ENV: str(folder)},
    }


def plan(folder: Path, video: str, stage: str, deaths: int) -> None:
    assert stage in STAGES, stage
    for old in folder.glob("death-*"):
        old.unlink()
    (folder / PLAN).write_text(json.dumps({"video": video, "stage": stage, "deaths": deaths}))


def clear(folder: Path) -> None:
    (folder / PLAN).unlink(missing_ok=True)


def deaths(folder: Path) -> int:
    return len(list(folder.glob("death-*")))


def install() -> None:
    """Wrap the decode and model stages of `fercli.job.cluster` in this worker process."""
    folder = os.environ.get(FAULTS_ENV)
    if not folder:
        return
    from fercli.job import cluster, stages

    folder = Path(folder)
    events, call = stages.Producer.clip_events, cluster._ModelActor.__call__

    def clip_events(self, key, clip, detector):
        _maybe_die(folder, "decode", [clip.name])
        return events(self, key, clip, detector)

    def model_call(self, batch):
        _maybe_die(folder, "model", [clip.name for clip in batch["clip"]])
        return call(self, batch)

    stages.Producer.clip_events = clip_events
    cluster._ModelActor.__call__ = model_call


def _maybe_die(folder: Path, stage: str, videos: list[str]) -> None:
    try:
        wanted = json.loads((folder / PLAN).read_text())
    except FileNotFoundError:  # no test is injecting faults now
        return
    if wanted["stage"] != stage or wanted["video"] not in videos:
        return
    for n in range(wanted["deaths"]):
        try:
            os.close(os.open(folder / f"death-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue  # an earlier worker died this death
        os.kill(os.getpid(), signal.SIGKILL)
