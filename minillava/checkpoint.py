"""Reading and writing checkpoint folders in the llava-hf layout (the safetensors weights; the JSON files
are read by config.py and processor.py, and written here for the demo and converted checkpoints).

Reading, into a model built on the meta device: the module tree mirrors the hub keys, so loading is a
strict one-to-one assignment: every tensor in the files is used, every parameter is filled, and shapes must
agree. The only renaming is the few layout aliases transformers itself writes or accepts (`canonical_key`;
weights.md lists them). Tensors come from mmapped files and are assigned without a copy when the dtype
already matches, so loading needs about one copy of the weights in memory, not two (the gpt-fast /
`low_cpu_mem_usage` pattern).
"""
import json
import math
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .chat import LLAVA_CHAT_TEMPLATE
from .errors import CheckpointError
from .images import CLIP_MEAN, CLIP_STD

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # safetensors' names of the dtypes loaded (and converted)
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def weight_files(folder, index=INDEX, single=SINGLE):
    """The weight files of a checkpoint folder: the shards named by the index, or the single file.
    (original.py passes the names of the original release's .bin files.)"""
    folder = Path(folder)
    if (folder / index).is_file():
        try:
            index_map = json.loads((folder / index).read_text(encoding="utf-8"))
            shards = sorted(set(index_map["weight_map"].values()))
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{folder / index}: not a valid {'safetensors' if index == INDEX else 'weights'} index "
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

    hub (llava-hf):        language_model.model.*, language_model.lm_head.*, vision_tower.vision_model.*, multi_modal_projector.*
    transformers 5 fresh:  vision_tower.embeddings.* (no "vision_model.")
    in-memory names:       model.language_model.*, lm_head.*, model.vision_tower.*, model.multi_modal_projector.*
    """
    if key.endswith(("position_ids", "rotary_emb.inv_freq")):  # buffers some exporters saved; we recompute them
        return None
    for old, new in (("model.language_model.model.", "language_model.model."),  # duplicated .model.model (5.10-5.23 bug)
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


def _open(path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def open_checkpoint(folder):
    """Open every safetensors file of `folder` (headers only, nothing is read yet):
    {canonical key: (file handle, key in the file, file path)}. CheckpointError names a corrupt file."""
    where = {}
    for path in weight_files(folder):
        f = _open(path)
        for key in f.keys():
            name = canonical_key(key)
            if name is None:
                continue
            if name in where:
                raise CheckpointError(f"{path}: tensor {key!r} is also stored as {where[name][1]!r} in {where[name][2].name}")
            where[name] = (f, key, path)
    return where


def check_layer_counts(config, tensors, folder):
    """config.json's layer counts against the layers stored (`tensors`: from open_checkpoint), before building."""
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
                       f"{', '.join(stored[k] for k in unexpected[:3])}")
        raise CheckpointError(" ".join(msg))


def load_weights(model, folder, device="cpu", dtype=torch.float32, progress=False, tensors=None):
    """Fill the parameters of `model` (built on the meta device) from the checkpoint in `folder`
    (`tensors`: what open_checkpoint(folder) returned, when the caller opened the files already).
    dtype: one dtype for every tensor, or {parameter name: dtype} (loading.weight_dtypes)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    tied = getattr(model.config, "tie_word_embeddings", False)
    where = dict(open_checkpoint(folder) if tensors is None else tensors)
    if tied:  # a tied lm_head is the embedding matrix; a stored copy is allowed but not needed
        where.pop("language_model.lm_head.weight", None)
        expected.pop("language_model.lm_head.weight", None)
    check_names(expected, {name: f"{key!r} in {path.name}" for name, (_, key, path) in where.items()}, folder)
    state = {}
    for i, (name, shape) in enumerate(expected.items()):
        f, key, path = where[name]
        try:
            info = f.get_slice(key)
            stored, stored_dtype = tuple(info.get_shape()), info.get_dtype()
            if stored != shape:
                raise CheckpointError(f"{path.name}: tensor {key!r} has shape {list(stored)}, "
                                      f"config.json implies {list(shape)}")
            if stored_dtype not in FLOAT_DTYPES:  # int, bool, complex, fp8/fp4 (quantized, needs scales)
                raise CheckpointError(f"{path.name}: tensor {key!r} has dtype {stored_dtype}, expected one of "
                                      f"{', '.join(FLOAT_DTYPES)} (a quantized or non-float checkpoint?)")
            t = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot read tensor {key!r}: {e}") from None
        state[name] = t.to(device=device, dtype=dtype[name] if isinstance(dtype, dict) else dtype)  # no copy when both match
        if progress:
            _progress_bar(i + 1, len(expected))
    return assign_weights(model, state)


def assign_weights(model, state):
    """Give a model built on the meta device its tensors, as they are (no copy), strictly, frozen for inference.
    A tied lm_head is the embedding matrix itself. (original/convert.py assigns the original release this way too.)"""
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:  # assign=True replaced both parameters; make them one again
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    for p in model.parameters():
        p.requires_grad_(False)
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
        write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total},
                                                         "weight_map": {k: n for n, ks in zip(names, shards) for k in ks}})
