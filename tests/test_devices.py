import sys

import pytest
import torch

from fercli.core import devices
from fercli.core.errors import FerError


@pytest.fixture
def two_gpus(monkeypatch):
    """torch as it looks on a machine with two GPUs (nothing is moved onto them in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_gpu_when_torch_sees_one(two_gpus):
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("device", ["cuda:2", "cuda:9"])
def test_a_gpu_index_torch_cannot_see_is_refused(two_gpus, device):
    with pytest.raises(FerError, match=rf"--device {device}: torch sees 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        devices.resolve_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_no_gpu_at_all_is_refused_for_every_cuda_form(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FerError, match=f"--device {device}: torch sees no CUDA GPU"):
        devices.resolve_device(device)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:", "CPU"])
def test_unknown_device_names_are_refused(device):
    with pytest.raises(FerError, match=repr(device)):
        devices.check_device(device)


def test_load_model_defaults_to_the_device_annotate_defaults_to(monkeypatch, lstm_checkpoint):
    import inspect

    import fercli

    asked = []

    def spy(device):
        asked.append(device)
        return torch.device("cpu")

    monkeypatch.setattr(devices, "resolve_device", spy)
    fercli.load_model(lstm_checkpoint)
    assert asked == ["auto"]  # what annotate uses for a model given by name or path
    assert inspect.signature(fercli.load_model).parameters["device"].default == "auto"


def test_a_torch_device_is_checked_like_its_name(two_gpus):
    assert devices.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert devices.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(FerError, match="cuda:5"):
        devices.resolve_device(torch.device("cuda", 5))


def test_synchronize_waits_for_the_gpu_it_is_given_not_the_current_one(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    devices.synchronize(torch.device("cuda", 1))
    devices.synchronize(torch.device("cpu"))  # nothing queued to wait for
    assert waited == [torch.device("cuda", 1)]


# -- --decoder --------------------------------------------------------------------------------


@pytest.fixture
def gpu_decoder(tmp_path, monkeypatch):
    """A stand-in PyNvVideoCodec on sys.path: `write(body)` gives it the module body to import."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, devices.GPU_DECODER, raising=False)

    def write(body: str) -> None:
        (tmp_path / f"{devices.GPU_DECODER}.py").write_text(body)

    return write


def test_the_cpu_decoder_is_always_there_and_auto_needs_a_gpu_model():
    assert devices.resolve_decoder("cpu", torch.device("cuda")) == "cpu"
    assert devices.resolve_decoder("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(FerError, match="--decoder gpu: the model runs on the CPU"):
        devices.resolve_decoder("gpu", torch.device("cpu"))
    with pytest.raises(FerError, match="--decoder must be auto, cpu or gpu, not 'nvdec'"):
        devices.resolve_decoder("nvdec", torch.device("cpu"))


def test_without_the_gpu_extra_auto_decodes_on_the_cpu_and_gpu_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    hidden = lambda name, *a: None if name == devices.GPU_DECODER else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    assert devices.resolve_decoder("auto", torch.device("cuda")) == "cpu"
    with pytest.raises(FerError, match=r"PyNvVideoCodec is not installed \(pip install 'fercli\[gpu\]'\)"):
        devices.resolve_decoder("gpu", torch.device("cuda"))


def test_a_gpu_decoder_that_cannot_start_is_one_quiet_line(gpu_decoder, caplog):
    # PyNvVideoCodec logs its troubleshooting at error level, then raises, where the driver lacks NVDEC.
    reason = "libnvidia-encode.so.1: cannot open shared object file"
    gpu_decoder(
        "import logging\nlogging.getLogger(__name__).error('Error importing PyNvVideoCodec')\n"
        f"raise RuntimeError('{reason}\\n\\n=== TROUBLESHOOTING ===')\n"
    )
    assert devices.resolve_decoder("auto", torch.device("cuda")) == "cpu"
    with pytest.raises(FerError) as error:
        devices.resolve_decoder("gpu", torch.device("cuda"))
    assert str(error.value) == f"--decoder gpu: PyNvVideoCodec cannot start ({reason})"
    assert not [r for r in caplog.records if r.name == devices.GPU_DECODER]


def test_auto_decodes_on_the_gpu_where_the_decoder_starts(gpu_decoder):
    gpu_decoder("__version__ = '2.2.4'\n")
    assert devices.resolve_decoder("auto", torch.device("cuda")) == "gpu"
    assert devices.resolve_decoder("gpu", torch.device("cuda", 1)) == "gpu"


def test_the_head_runs_at_the_runs_precision_on_a_gpu_and_in_fp32_on_a_cpu():
    # oneDNN refuses a bf16 LSTM on CPUs without AVX-512 BF16 or AMX: on a CPU the head never asks for one.
    assert devices.head_precision("bf16", torch.device("cuda")) == "bf16"
    assert devices.head_precision("fp16", torch.device("cuda:1")) == "fp16"
    assert devices.head_precision("bf16", torch.device("cpu")) == "fp32"
