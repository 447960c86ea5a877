"""Reading and writing checkpoint folders in the llava-hf layout (the safetensors weights; the JSON files
are read by config.py and processor.py, and written here for the demo and converted checkpoints).

Reading, into a model built on the meta device, in three steps: `stored_tensors` reads the headers of the
files (nothing else), `plan_weights` matches them to the model's parameters and decides the dtype each is
kept in, `load_weights` reads them. The module tree mirrors the hub keys, so the match is a strict
one-to-one: every tensor in the files is used, every parameter is filled, and shapes must agree. The only
renaming is the few layout aliases transformers itself writes or accepts (`canonical_key`; weights.md lists
them). Tensors come from mmapped files and are assigned without a copy when the dtype already matches, so
loading needs about one copy of the weights in memory, not two (the gpt-fast / `low_cpu_mem_usage` pattern).
"""
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .chat import LLAVA_CHAT_TEMPLATE
from .errors import CheckpointError
from .images import CLIP_MEAN, CLIP_STD

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# safetensors' names of the dtypes loaded (and converted): anything else (int, bool, fp8, fp4) is refused
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def weight_files(folder, index=INDEX, single=SINGLE):
    """The weight files of a checkpoint folder: the shards named by the index, or the single file.
    (original/reading.py passes the names of the original release's .bin files.)"""
    folder = Path(folder)
    if (folder / index).is_file():
        try:
            index_map = json.loads((folder / index).read_text(encoding="utf-8"))
            shards = sorted(set(index_map["weight_map"].values()))
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
            kind = "safetensors" if index == INDEX else "weights"
            raise CheckpointError(f"{folder / index}: not a valid {kind} index "
                                  f"(expected {{'weight_map': {{tensor: shard}}}}): {e!r}") from None
        if not shards or not all(isinstance(s, str) for s in shards):
            raise CheckpointError(f"{folder / index}: weight_map names no shard files")
        for s in shards:
            if Path(s).name != s:  # the index may only name files in this folder
                raise CheckpointError(f"{folder / index}: shard name {s!r} is not a file name in {folder}")
            if not (folder / s).is_file():
                raise CheckpointError(f"{folder / index} names shard {s}, which is missing from {folder} "
                                      f"(incomplete download?)")
        return [folder / s for s in shards]
    if (folder / single).is_file():
        return [folder / single]
    if single != SINGLE:
        raise CheckpointError(f"{folder}: no {single} or {index} found")
    pickles = [p for p in PICKLES if (folder / p).exists()] + [p.name for p in folder.glob("pytorch_model-*.bin")]
    if pickles:
        raise CheckpointError(f"{folder}: holds {pickles[0]}, a PyTorch pickle. minillava reads safetensors only and "
                              f"never unpickles a checkpoint (for the original liuhaotian LLaVA checkpoints use "
                              f"`minillava convert-original`)")
    raise CheckpointError(f"{folder}: no {SINGLE} or {INDEX} found (is this a llava-hf checkpoint folder?)")


def canonical_key(key):
    """Map any layout transformers writes onto the hub layout our module tree mirrors; None = drop.

    hub (llava-hf):        language_model.model.*, language_model.lm_head.*, vision_tower.vision_model.*,
                           multi_modal_projector.*
    transformers 5 fresh:  vision_tower.embeddings.* (no "vision_model.")
    in-memory names:       model.language_model.*, lm_head.*, model.vision_tower.*, model.multi_modal_projector.*
    """
    if key.endswith(("position_ids", "rotary_emb.inv_freq")):  # buffers some exporters saved; we recompute them
        return None
    # the first: a duplicated .model.model (a transformers 5.10-5.23 bug)
    for old, new in (("model.language_model.model.", "language_model.model."),
                     ("language_model.model.model.", "language_model.model."),
                     ("model.language_model.", "language_model.model."),
                     ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(old):
            key = new + key[len(old):]
            break
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


@dataclass(frozen=True)
class Tensor:
    """One tensor of a checkpoint's files, as its header describes it (nothing is read), and once planned
    (`plan_weights`) the dtype the model keeps it in."""
    path: Path  # the safetensors file
    key: str  # its name in that file
    shape: tuple
    stored: str  # its dtype, as safetensors names it: "F16", "BF16", "F32", ... ("I32", "F8_E4M3": refused)
    dtype: torch.dtype | None = None  # what the model holds it in

    def __str__(self):
        return f"{self.key!r} in {self.path.name}"


def _open(path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def stored_tensors(folder):
    """{canonical key: Tensor} for every tensor in the safetensors files of `folder`, from their headers.
    CheckpointError names a corrupt file, or a tensor stored twice under two layouts' names."""
    tensors = {}
    for path in weight_files(folder):
        f = _open(path)
        for key in f.keys():
            name = canonical_key(key)
            if name is None:
                continue
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {key!r} is also stored as {tensors[name]}")
            header = f.get_slice(key)
            tensors[name] = Tensor(path, key, tuple(header.get_shape()), header.get_dtype())
    return tensors


def check_layer_counts(config, tensors, folder):
    """config.json's layer counts against the layers stored (`tensors`: from stored_tensors), before building."""
    for prefix, where, n in [("language_model.model.layers.", "text_config", config.text_config.num_hidden_layers),
                             ("vision_tower.vision_model.encoder.layers.", "vision_config",
                              config.vision_config.num_hidden_layers)]:
        stored = {k[len(prefix):].split(".")[0] for k in tensors if k.startswith(prefix)}
        if len(stored) != n or stored != {str(i) for i in range(n)}:  # the length first: n may be 10**9
            raise CheckpointError(f"{folder}: config.json has {where}.num_hidden_layers = {n}, but the files hold "
                                  f"{len(stored)} layer(s) {prefix}* (a config from another model?)")


def check_names(expected, stored, source):
    """Every parameter filled and every stored tensor used, else a CheckpointError naming some of each.
    expected: the model's parameter names; stored: {canonical name: where it is stored, for the message}."""
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        msg = [f"{source}: the checkpoint does not match the model built from config.json."]
        if missing:
            msg.append(f"{len(missing)} parameter(s) missing from the files, e.g. {missing[:3]}")
        if unexpected:
            msg.append(f"{len(unexpected)} tensor(s) in the files fit no parameter, e.g. "
                       f"{', '.join(str(stored[k]) for k in unexpected[:3])}")
        raise CheckpointError(" ".join(msg))


def plan_weights(model, tensors, folder, dtype=torch.float32, keep_stored=()):
    """What each parameter of `model` (built on the meta device) is read from and kept in: {name: Tensor}.

    Strict: every parameter is one stored tensor of its shape and a float dtype, every stored tensor is
    used. A weight tied to another (lm_head to the embeddings, `Llava.__init__`) is one parameter; a stored
    copy of it is allowed and never read. Each is kept in `dtype`, except the parameters named in
    `keep_stored`, which keep a float16 or bfloat16 file's dtype (layers.py widens them as they are used)."""
    params = dict(model.named_parameters())  # a tied weight once, under its first name
    copies = set(model.state_dict(keep_vars=True)) - set(params)  # the other names of tied weights
    tensors = {k: t for k, t in tensors.items() if k not in copies}
    check_names(params, tensors, folder)
    plan = {}
    for name, p in params.items():
        t = tensors[name]
        if t.shape != tuple(p.shape):
            raise CheckpointError(f"{t.path.name}: tensor {t.key!r} has shape {list(t.shape)}, config.json "
                                  f"implies {list(p.shape)} (a config.json from another model?)")
        if t.stored not in FLOAT_DTYPES:  # int, bool, complex, fp8/fp4 (quantized, needs scales)
            raise CheckpointError(f"{t.path.name}: tensor {t.key!r} has dtype {t.stored}, expected one of "
                                  f"{', '.join(FLOAT_DTYPES)} (a quantized or non-float checkpoint?)")
        narrow = FLOAT_DTYPES[t.stored] in (torch.float16, torch.bfloat16)
        plan[name] = replace(t, dtype=FLOAT_DTYPES[t.stored] if name in keep_stored and narrow else dtype)
    return plan


def load_weights(model, plan, device="cpu", progress=False):
    """Read each tensor of `plan` (plan_weights) from its file into the dtype the plan gives it, on `device`
    (no copy where both already match), and assign them to `model`."""
    files, state = {}, {}
    for i, (name, t) in enumerate(plan.items()):
        if t.path not in files:
            files[t.path] = _open(t.path)
        try:
            x = files[t.path].get_tensor(t.key)
        except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{t.path}: cannot read tensor {t.key!r}: {e}") from None
        state[name] = x.to(device=device, dtype=t.dtype)
        if progress:
            _progress_bar(i + 1, len(plan))
    return assign_weights(model, state)


def assign_weights(model, state):
    """Give a model built on the meta device its tensors as they are (no copy), frozen for inference.
    `state` has one tensor per parameter, under the names `model.named_parameters()` gives (a tied weight
    once); a tied weight stays one parameter wherever it sits. (original/convert.py assigns the original
    release this way too.)"""
    new = {}  # id of the meta parameter -> its replacement, shared by every module that holds it
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        if id(p) not in new:  # the first name of a tied weight is the one named_parameters() gives
            new[id(p)] = nn.Parameter(state[name], requires_grad=False)
        module, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module), attr, new[id(p)])
    return model


def _progress_bar(done, total, width=30):
    """On a terminal only (not into a log file), redrawn in place and erased when done."""
    if not sys.stderr.isatty():
        return
    n = width * done // total
    line = f"loading weights [{'#' * n}{'.' * (width - n)}] {done}/{total} tensors"
    sys.stderr.write("\r" + (line if done < total else " " * len(line) + "\r"))
    sys.stderr.flush()


# --- writing (the demo's training and convert-original): the files transformers' save_pretrained writes ---


def padded_vocab_size(n_tokens):
    """The vocabulary llava-hf gives a checkpoint: its n_tokens plus `<image>` and `<pad>`, rounded up to a
    multiple of 64 (transformers' conversion script: resize_token_embeddings(n + 2, pad_to_multiple_of=64))."""
    return math.ceil((n_tokens + 2) / 64) * 64



def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_processor_configs(out, config, image_mean=CLIP_MEAN, image_std=CLIP_STD, pad=False):
    """preprocessor_config.json, processor_config.json and chat_template.json for a LlavaConfig.

    pad=True (the original's `image_aspect_ratio: "pad"`) writes `LlavaImageProcessor` with `do_pad`, which
    pads to a square before the resize; otherwise llava-hf's plain `CLIPImageProcessor` (resize, crop).
    """
    out, size = Path(out), config.vision_config.image_size
    write_json(out / "preprocessor_config.json", {
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, **({"do_pad": True} if pad else {}), "do_rescale": True, "do_resize": True,
        "image_mean": image_mean, "image_processor_type": "LlavaImageProcessor" if pad else "CLIPImageProcessor",
        "image_std": image_std, "processor_class": "LlavaProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": size}})
    write_json(out / "processor_config.json", {
        "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": config.vision_config.patch_size,
        "processor_class": "LlavaProcessor", "vision_feature_select_strategy": config.vision_feature_select_strategy})
    write_json(out / "chat_template.json", {"chat_template": LLAVA_CHAT_TEMPLATE})


def save_weights(state, out, max_shard_bytes=5 * 10**9):
    """state (hub key -> tensor) as model.safetensors, or, above max_shard_bytes, as greedy shards in key order
    plus model.safetensors.index.json, as transformers' save_pretrained writes them."""
    out = Path(out)
    state = {k: v.detach().contiguous() for k, v in sorted(state.items())}
    shards, size = [[]], 0
    for k, v in state.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards, size = shards + [[]], 0
        shards[-1].append(k)
        size += v.nbytes
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards):
        save_file({k: state[k] for k in keys}, str(out / name), metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(v.nbytes for v in state.values())
        weight_map = {k: n for n, ks in zip(names, shards) for k in ks}
        write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
