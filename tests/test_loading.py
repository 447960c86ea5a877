"""Devices and dtypes: what this machine cannot run is refused with a DeviceError before anything is loaded.
"""

import pytest
import torch

import minillava
from minillava import DeviceError, load_model
from minillava.loading import resolve_device, resolve_dtype
from tests.helpers.mistakes import raises

# ---- devices and dtypes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "float64", "fp8", torch.int8, torch.float64, 3, "auto"])
def test_dtype_that_cannot_run(tiny, dtype):
    raises(DeviceError, "dtype", str(dtype).removeprefix("torch."), call=lambda: load_model(tiny, dtype=dtype))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 3.5, "meta", "xla"])
def test_device_that_does_not_exist(device):
    raises(DeviceError, repr(device) if not isinstance(device, str) else device, call=lambda: resolve_device(device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda(tiny):
    raises(DeviceError, "'cuda'", "CUDA is not available", call=lambda: load_model(tiny, device="cuda"))
    raises(DeviceError, "'cuda:1'", call=lambda: minillava.load(tiny, device="cuda:1"))


def test_cuda_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    raises(DeviceError, "Tesla T4", "bfloat16", "float16",
           call=lambda: resolve_dtype("bfloat16", torch.device("cuda"), None))
    raises(DeviceError, "Tesla T4", call=lambda: resolve_dtype(None, torch.device("cuda"), "bfloat16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_only_where_unsupported(tiny):
    if torch.cuda.is_bf16_supported():
        assert load_model(tiny, device="cuda", dtype="bfloat16").dtype == torch.bfloat16
    else:
        raises(DeviceError, "bfloat16", call=lambda: load_model(tiny, device="cuda", dtype="bfloat16"))
