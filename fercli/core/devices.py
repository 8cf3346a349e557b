"""Where the model runs and in what precision: the --device and --precision rules, in one place."""

from __future__ import annotations

from contextlib import contextmanager

from .errors import FerError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device) -> str:
    """The numeric precision the model runs in; fp32 stays exact, the others trade ~1% for speed."""
    if precision not in PRECISIONS:
        raise FerError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise FerError("--precision fp16 needs --device cuda (use bf16 on a CPU)")
    return precision


@contextmanager
def autocast(precision: str, device):
    """Run the model's matrix work in `precision` (a no-op for fp32)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        yield


def synchronize(device) -> None:
    """Wait for `device`'s queued work (CUDA runs asynchronously): a clock read after it is honest.

    The device itself, not the current one: a model on cuda:1 is timed by waiting for cuda:1.
    """
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> None:
    """FerError unless `device` is one fer runs on ("cuda:N" picks a GPU)."""
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise FerError(f"--device must be auto, cpu or cuda, not {device!r}")


def resolve_device(device):
    """The torch device for a --device value or a torch.device; FerError for a GPU torch cannot see."""
    import torch

    device = str(device)  # a torch.device reads as "cpu", "cuda" or "cuda:N", checked the same way
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FerError(f"--device {device}: torch sees no CUDA GPU (use --device cpu or auto)")
        index = int(device[5:] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise FerError(f"--device {device}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device(device)
