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
