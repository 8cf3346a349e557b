"""One line per step of bench/gpu.sh's gpu.json: exit, seconds, GPU use and the headline figures.

python bench/gpu_summary.py DIR/gpu.json
"""

import json
import sys

HEADLINE = (
    "decoded_fps",
    "sampled_fps",
    "end_to_end_s",
    "backbone_only_fps",
    "producer_only_fps",
    "peak_cuda_mb",
    "epoch_s",
)


def main(path: str) -> None:
    report = json.load(open(path))
    print(f"mode {report['mode']}, prepared {report['prepared_s']} s, total {report['total_s']} s")
    for name, step in report["steps"].items():
        figures = step.get("figures")
        heads = {k: figures[k] for k in HEADLINE if isinstance(figures, dict) and k in figures}
        gpu = f" gpu {step['gpu_util_mean']:.0f}% mean" if "gpu_util_mean" in step else ""
        print(f"{name}: exit {step['exit']} {step.get('seconds', '')} s{gpu} {heads or ''} {step.get('reason', '')}")
        if name in ("gpu_path", "gpu_path_pyav") and isinstance(figures, dict):
            print("   ", json.dumps({k: figures.get(k) for k in ("stage_share", "faces", "clips")})[:1500])
        if name.startswith("sweep_") and isinstance(figures, dict):
            for run in figures["runs"]:
                util = f", GPU {run['gpu_util_mean']:.0f}% mean" if "gpu_util_mean" in run else ""
                fps = f"{run['decoded_fps']:.0f} decoded frames/s" if "decoded_fps" in run else f"exit {run['exit']}"
                print(f"    {step['constant']}={run['value']}: {fps}{util}, {run.get('workers')} workers")
        if name in ("env", "nvdec", "detector", "detector_torch") and figures:
            print("   ", json.dumps(figures)[:1500])


if __name__ == "__main__":
    main(sys.argv[1])
