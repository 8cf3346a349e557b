"""fer's CLI with some of its defaults set first, so a bench sweep can try a value before it is chosen.

    python bench/knobs.py job.devicepath.PRODUCER_THREADS=8 job.schedules.MAX_WORKERS=12 -- benchmark speed ...

Each setting names a module of `fercli` and one of its upper-case constants; the value is parsed
as the constant's own type. The constants these sweeps set are read when a run starts, in this
process (`pipeline` reads `PRODUCER_THREADS`, `schedules.workers` reads `MAX_WORKERS`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def apply(settings: list[str]) -> dict:
    """Set each `module.CONSTANT=value` of `settings` on fercli's modules; the values set."""
    done = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        module, _, constant = name.rpartition(".")
        target = importlib.import_module(f"fercli.{module}")
        if not constant.isupper() or not hasattr(target, constant):
            raise SystemExit(f"{setting}: fercli.{module} has no constant {constant}")
        done[name] = getattr(target, constant).__class__(value)
        setattr(target, constant, done[name])
    return done


if __name__ == "__main__":
    if "--" not in sys.argv:
        raise SystemExit(__doc__)
    split = sys.argv.index("--")
    print(f"knobs: {apply(sys.argv[1:split])}", flush=True)
    sys.argv = ["fer", *sys.argv[split + 1 :]]
    from fercli.cli import main

    main()
