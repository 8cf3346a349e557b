"""Where the model runs, in what precision, and where clips are decoded: the --device, --precision
and --decoder rules, in one place."""

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


def head_precision(precision: str, device) -> str:
    """The precision of the head (LSTM and classifiers): the run's on a GPU, fp32 on a CPU, where
    oneDNN runs an LSTM in bf16 only with AVX-512 BF16 or AMX, and the head is ~2% of the work."""
    return precision if device.type == "cuda" else "fp32"


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


DECODERS = ("auto", "cpu", "gpu")
GPU_DECODER = "PyNvVideoCodec"  # NVIDIA's NVDEC bindings: the `gpu` extra


def check_decoder(decoder: str) -> None:
    """FerError unless `decoder` is one of DECODERS."""
    if decoder not in DECODERS:
        raise FerError(f"--decoder must be auto, cpu or gpu, not {decoder!r}")


def gpu_decoder_problem(device) -> str | None:
    """Why clips cannot be decoded on the GPU for a model on `device` (a torch.device), or None when they can."""
    import importlib.util

    if device.type != "cuda":
        return "the model runs on the CPU (frames decoded on a GPU are for a model on that GPU)"
    if importlib.util.find_spec(GPU_DECODER) is None:
        return f"{GPU_DECODER} is not installed (pip install 'fercli[gpu]')"
    return _gpu_decoder_import_problem()


def _gpu_decoder_import_problem() -> str | None:
    import importlib
    import logging

    from .errors import first_line

    # Its import logs several lines at error level where the driver has no video decoding; the reason is ours to give.
    logger = logging.getLogger(GPU_DECODER)

    def muted(record):
        return False

    logger.addFilter(muted)
    try:
        importlib.import_module(GPU_DECODER)
    except Exception as error:  # a missing driver library, an old driver: a finding, not a crash
        return f"{GPU_DECODER} cannot start ({first_line(error)})"
    finally:
        logger.removeFilter(muted)
    return None


def resolve_decoder(decoder: str, device) -> str:
    """Where clips are decoded, "cpu" or "gpu", for --decoder and the model's resolved `device`.

    auto: on the GPU where the model runs on a CUDA GPU and the GPU decoder is installed and starts;
    gpu: the same, or a FerError saying why not; cpu: PyAV on the CPU.
    """
    check_decoder(decoder)
    if decoder == "cpu":
        return "cpu"
    problem = gpu_decoder_problem(device)
    if problem is None:
        return "gpu"
    if decoder == "gpu":
        raise FerError(f"--decoder gpu: {problem}")
    return "cpu"
