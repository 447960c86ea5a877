"""From a checkpoint folder to a model on a device: the edge where files, devices, dtypes and memory are decided.

The model files (clip, projector, llama, llava) hold only the math; everything a user can get wrong on the
way in is checked here, before anything large is allocated: the folder, config.json against the stored
tensors, the device, the dtype, and whether the weights fit in the memory available.

Three modes (`dtype` is what the model computes in, `weights` how its large matrices are held):

- exact float32 in the memory of the file: `dtype="float32", weights="stored"` (the default on a CPU). The
  weights of every Linear and the token embeddings stay float16/bfloat16 as stored, memory-mapped, and are
  widened to float32 as they are used (layers.py): logits identical to transformers' float32.
- float32 materialized: `weights="materialized"` converts every weight at load (twice the memory of a
  float16 file; what a training loop or a probe that needs float32 parameters wants).
- half precision: `dtype="float16"` or `"bfloat16"` computes in it (the default on a GPU: the checkpoint's
  dtype). Fast on GPUs, slow on CPUs without native half-precision arithmetic, and not the exact reference.
"""
import subprocess
import sys
from pathlib import Path

import torch

from .checkpoint import check_layer_counts, load_weights, plan_weights, stored_tensors
from .config import DTYPES, LlavaConfig
from .errors import CheckpointError, ConfigError, DeviceError
from .layers import Embedding, Linear
from .llava import Llava
from .processor import Processor

DEMO = Path(__file__).parent / "demo"  # the tiny LLaVA minillava trains itself (minillava/demo/train.py)
WEIGHTS = ("stored", "materialized")
KV_POSITIONS = 1024  # the KV cache a chat session starts with (session.py), in the memory estimate
GB = 1e9


def load(path=None, device="cpu", dtype=None, weights="stored", progress=False):
    """Load a llava-hf checkpoint folder (the embedded demo when `path` is None): (model, processor)."""
    path = Path(path) if path is not None else DEMO
    model = load_model(path, device=device, dtype=dtype, weights=weights, progress=progress)
    return model, Processor.from_pretrained(path, config=model.config)


def load_model(path, device="cpu", dtype=None, weights="stored", progress=False):
    """The model alone. Built on the meta device (no random init, no memory), then, once the memory check
    passed, the mmapped weights are assigned to its parameters (no copy where device and dtype already match).

    dtype: what the model computes in (default float32 on CPU, the checkpoint's dtype on a GPU).
    weights: "stored" keeps float16/bfloat16 Linear and embedding weights as stored under a float32 dtype
    (exact, half the memory); "materialized" converts every weight to `dtype` at load."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: " + ("expected a checkpoint folder (config.json, *.safetensors, tokenizer "
                                             "files), got a file" if path.exists() else "no such checkpoint folder" +
                                             _hub_hint(path)))
    if weights not in WEIGHTS:
        raise DeviceError(f"weights={weights!r} is not a mode (expected 'stored' or 'materialized')")
    config = LlavaConfig.from_json(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, config.dtype)
    tensors = stored_tensors(path)  # a corrupt or missing file fails here, before anything is built
    check_layer_counts(config, tensors, path)  # and so does a config claiming other (or 10**9) layers
    try:
        with torch.device("meta"):
            model = Llava(config)
    except (RuntimeError, TypeError, OverflowError, ValueError) as e:  # sizes torch cannot even describe
        raise ConfigError(f"{path / 'config.json'}: no model of these sizes can be built ({e})") from None
    plan = plan_weights(model, tensors, path, dtype, kept_as_stored(model, dtype, weights))
    check_memory(model, tensors, device, dtype, weights, path)
    return load_weights(model, plan, device=device, progress=progress).eval()


def _hub_hint(path):
    """For 'llava-hf/llava-1.5-7b-hf' (an organisation and a repository name, neither a folder here): how to get it."""
    if len(path.parts) != 2 or path.is_absolute() or Path(path.parts[0]).exists():
        return ""
    return (f"; names are not downloaded: minillava reads local folders (download it first: "
            f"hf download {path.as_posix()} --local-dir {path.parts[1]}, see weights.md)")


def kept_as_stored(model, dtype, weights):
    """The parameters that keep a float16/bfloat16 file's dtype: with weights="stored" and a float32 dtype, the
    weight of every Linear and Embedding (layers.py widens it as it is used). Small tensors (norms, biases,
    the patch convolution, the class embedding) are always converted."""
    if weights != "stored" or dtype != torch.float32:
        return set()
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (Linear, Embedding))}


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


# --- the memory check: before anything is allocated, what the chosen mode needs against what is free ---------

def memory_needed(model, dtypes, dtype):
    """Bytes the model will hold on its device: {"weights": ..., "KV cache": ..., "activations": ...}.

    weights: every parameter in the dtype `dtypes` ({name: dtype}) gives it (memory-mapped or copied, it must
    be resident to run at speed); KV cache: KV_POSITIONS positions in `dtype`; activations: one 1024-token
    forward (the MLP's hidden states, one attention matrix, the logits) + 0.5 GB for torch itself, and the
    buffer the largest stored weight is widened into (layers.py: a prompt converts each weight whole)."""
    params = dict(model.named_parameters())  # tied weights once
    weights = sum(p.numel() * dtypes[name].itemsize for name, p in params.items())
    t = model.config.text_config
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * KV_POSITIONS * dtype.itemsize
    T = KV_POSITIONS
    act = (T * (3 * t.intermediate_size + t.vocab_size) + t.num_attention_heads * T * T) * 4 + 2**29
    act += max((p.numel() for n, p in params.items() if dtypes[n] != dtype), default=0) * dtype.itemsize
    return {"weights": weights, "KV cache": kv, "activations": act}


def memory_available(device):
    """(bytes free for a new allocation, where that figure comes from), or (None, why) where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)} (torch.cuda.mem_get_info)"
    if sys.platform.startswith("linux"):
        try:
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
            free, source = int(info["MemAvailable"].split()[0]) * 1024, "MemAvailable in /proc/meminfo"
        except (OSError, KeyError, ValueError):
            return None, "no MemAvailable in /proc/meminfo"
        try:  # a container's own limit (cgroup v2), when lower
            cg = Path("/sys/fs/cgroup")
            limit = (cg / "memory.max").read_text().strip()
            room = int(limit) - int((cg / "memory.current").read_text()) if limit != "max" else free
            if room < free:
                free, source = room, "the cgroup's memory.max"
        except (OSError, ValueError):
            pass
        return free, source
    if sys.platform == "darwin":
        try:  # free + inactive + speculative pages (what Activity Monitor counts as available)
            out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=2).stdout
            page = int(out.split("page size of ")[1].split()[0])
            pages = {k.strip(): int(v.strip().rstrip(".")) for k, v in
                     (line.split(":") for line in out.splitlines()[1:] if ":" in line)}
            n = sum(pages.get(f"Pages {k}", 0) for k in ("free", "inactive", "speculative"))
            return n * page, "free + inactive pages (vm_stat)"
        except (OSError, IndexError, ValueError, subprocess.SubprocessError):
            return None, "vm_stat unreadable"
    return None, f"not measured on {sys.platform}"


def mode_memory(model, tensors, folder, dtype, weights):
    """memory_needed of a load mode (`dtype`, `weights`) on the stored tensors of a folder."""
    plan = plan_weights(model, tensors, folder, dtype, kept_as_stored(model, dtype, weights))
    return memory_needed(model, {name: t.dtype for name, t in plan.items()}, dtype)


def check_memory(model, tensors, device, dtype, weights, path):
    """DeviceError, before any weight is read, when the mode cannot fit: the figures, and which mode would."""
    available, source = memory_available(device)
    if available is None:
        return
    need = mode_memory(model, tensors, path, dtype, weights)
    if sum(need.values()) <= available:
        return
    half = model.config.dtype if model.config.dtype in ("float16", "bfloat16") else "bfloat16"
    fits = []
    for label, d, w in [("dtype='float32', weights='stored'", torch.float32, "stored"),
                        ("dtype='float32', weights='materialized'", torch.float32, "materialized"),
                        (f"dtype='{half}'", getattr(torch, half), "stored")]:
        other = sum(mode_memory(model, tensors, path, d, w).values())
        if other <= available:
            fits.append(f"{label} needs {other / GB:.1f} GB and fits")
    where = "GPU" if device.type == "cuda" else "memory"
    raise DeviceError(
        f"{path}: this load needs {sum(need.values()) / GB:.1f} GB on {device} ("
        + ", ".join(f"{k} {v / GB:.1f} GB" for k, v in need.items())
        + f"), {available / GB:.1f} GB are available ({source}); "
        + ("; ".join(fits) if fits else f"no mode fits in this {where}: free memory or use a larger machine")
        + ". Nothing was loaded.")
