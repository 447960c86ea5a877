"""Reading the weight files of the original release: the LLaVA `.bin` shards and the openai CLIP folder.

The one place minillava unpickles anything, and only with `torch.load(weights_only=True)`; whatever is not
a dict of name -> tensor is refused too (the pickle policy: minillava/original/__init__.py). The original
loads the same files with `from_pretrained` (haotian-liu/LLaVA, llava/model/builder.py,
`load_pretrained_model`, and the CLIP tower in llava/model/multimodal_encoder/clip_encoder.py).
"""

import pickle

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..checkpoint import weight_files
from ..errors import CheckpointError


def bin_files(folder):
    """The `.bin` shards named by pytorch_model.bin.index.json, or the single pytorch_model.bin."""
    return weight_files(folder, index="pytorch_model.bin.index.json", single="pytorch_model.bin")


def read_bin(path):
    """A `.bin` state dict, unpickled with weights_only=True (mmapped when the file format allows)."""
    try:
        obj = _load_tensors(path)
    except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False: exactly what we never do
        reason = next((line.strip() for line in str(e).splitlines() if "nsupported" in line), "a non-tensor object")
        reason = reason.removeprefix("WeightsUnpickler error: ").split(". Please")[0]
        raise CheckpointError(f"{path}: refused to unpickle: not just tensors ({reason}); minillava reads .bin "
                              f"files with torch.load(weights_only=True) and never runs pickled code") from None
    except Exception as e:  # truncated, corrupt, not a torch file at all
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensor name -> tensor, found a {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: expected a dict of tensor name -> tensor, found {key!r} -> "
                                  f"{type(value).__name__}")
    return obj


def _load_tensors(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # mmap needs the zip format torch >= 1.6 writes; older files load without it
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_safetensors(path):
    """A safetensors state dict (the CLIP folder's model.safetensors); CheckpointError naming the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from None
