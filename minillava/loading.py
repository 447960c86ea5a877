"""From a checkpoint folder to a model on a device: the edge where files, devices and dtypes are decided.

The model files (clip, projector, llama, llava) hold only the math; everything a user can get wrong on the
way in is checked here, before anything large is allocated: the folder, config.json against the stored
tensors, the device, the dtype.
"""
from pathlib import Path

import torch

from .checkpoint import check_layer_counts, load_weights, open_checkpoint
from .config import DTYPES, LlavaConfig
from .errors import CheckpointError, ConfigError, DeviceError
from .llava import Llava
from .processor import Processor

DEMO = Path(__file__).parent / "demo"  # the tiny LLaVA minillava trains itself (minillava/demo/train.py)


def load(path=None, device="cpu", dtype=None, progress=False):
    """Load a llava-hf checkpoint folder (the embedded demo when `path` is None): (model, processor)."""
    path = Path(path) if path is not None else DEMO
    model = load_model(path, device=device, dtype=dtype, progress=progress)
    return model, Processor.from_pretrained(path, config=model.config)


def load_model(path, device="cpu", dtype=None, progress=False):
    """The model alone. Built on the meta device (no random init, no memory), then the mmapped weights
    are assigned to its parameters (no copy where device and dtype already match)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: " + ("expected a checkpoint folder (config.json, *.safetensors, tokenizer "
                                             "files), got a file" if path.exists() else "no such checkpoint folder" +
                                             _hub_hint(path)))
    config = LlavaConfig.from_json(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, config.dtype)
    tensors = open_checkpoint(path)  # a corrupt or missing file fails here, before anything is built
    check_layer_counts(config, tensors, path)  # and so does a config claiming other (or 10**9) layers
    try:
        with torch.device("meta"):
            model = Llava(config)
    except (RuntimeError, TypeError, OverflowError, ValueError) as e:  # sizes torch cannot even describe
        raise ConfigError(f"{path / 'config.json'}: no model of these sizes can be built ({e})") from None
    load_weights(model, path, device=device, dtype=dtype, progress=progress, tensors=tensors)
    return model.eval()


def _hub_hint(path):
    """For 'llava-hf/llava-1.5-7b-hf' (an organisation and a repository name, neither a folder here): how to get it."""
    if len(path.parts) != 2 or path.is_absolute() or Path(path.parts[0]).exists():
        return ""
    return (f"; names are not downloaded: minillava reads local folders (download it first: hf download {path.as_posix()} "
            f"--local-dir {path.parts[1]}, see weights.md)")


def resolve_device(device):
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceError(f"device {device!r} is not a device torch knows (expected 'cpu', 'cuda', 'cuda:1', 'mps'): "
                          f"{e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for, but CUDA is not available on this machine "
                          f"(torch {torch.__version__}); use device='cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {str(device)!r} was asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(device)!r} is not supported (expected 'cpu', 'cuda' or 'mps')")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for, but MPS (Apple GPU) is not available on this machine")
    return device


def resolve_dtype(dtype, device, checkpoint_dtype=None):
    """The caller's dtype; by default float32 on CPU (exact, and fast there) and the checkpoint's dtype on a GPU."""
    if dtype is None:
        dtype = checkpoint_dtype if device.type != "cpu" and checkpoint_dtype else "float32"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DeviceError(f"dtype {dtype!r} is not supported (expected float32, float16 or bfloat16)")
        dtype = getattr(torch, DTYPES[dtype])
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise DeviceError(f"dtype {dtype} is not supported (expected float32, float16 or bfloat16)")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use dtype='float16'")
    return dtype
