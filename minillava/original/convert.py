"""An original LLaVA-1.5 checkpoint made usable: written out as a llava-hf folder (`convert_original`:
config, safetensors shards, processor and tokenizer files) or loaded straight into a minillava model
(`load_original`). The files are read by reading.py and renamed by layout.py; what differs from llava-hf,
and why, is in minillava/original/__init__.py. The folder has the layout of llava-hf/llava-1.5-7b-hf, which
transformers' models/llava/convert_llava_weights_to_hf.py wrote; its processor keeps the original's square
padding.
"""

import json
import shutil
import warnings
from pathlib import Path

import torch

from ..checkpoint import assign_weights, check_names, save_weights, write_json, write_processor_configs
from ..config import read_json
from ..errors import CheckpointError, DeviceError, TokenizerError
from ..images import CLIP_MEAN, CLIP_STD
from ..llava import Llava
from ..loading import memory_available, memory_needed, resolve_device, resolve_dtype
from .layout import hub_state, llava_hf_config

IMAGE_TOKEN = "<image>"


# --- into a minillava model -----------------------------------------------------------------------

def load_original(folder, clip_folder, device="cpu", dtype=None):
    """An original LLaVA-1.5 checkpoint folder + its CLIP folder -> a minillava `Llava` (eval mode).

    dtype None: float32 on CPU, the checkpoint's dtype (float16) on a GPU, as `minillava.load` chooses.
    """
    _, config = llava_hf_config(folder, clip_folder)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, config.dtype)
    with torch.device("meta"):
        model = Llava(config)
    check_memory(model, folder, device, dtype)
    state, origin = hub_state(folder, clip_folder, config)
    check_state(model, state, origin, (folder, clip_folder))
    assign_weights(model, {k: state.pop(k).to(device=device, dtype=dtype) for k in list(state)})  # one at a time
    return model.eval()


def check_memory(model, folder, device, dtype):
    """DeviceError, before any weight is read, when every weight converted to `dtype` cannot fit."""
    available, source = memory_available(device)
    need = sum(memory_needed(model, dict.fromkeys(model.state_dict(keep_vars=True), dtype), dtype).values())
    if available is not None and need > available:
        raise DeviceError(f"{folder}: loading this original checkpoint needs {need / 1e9:.1f} GB on {device} (all "
                          f"{str(dtype)[6:]}), {available / 1e9:.1f} GB are available ({source}); convert it once "
                          "(minillava convert-original) and load that folder: its float16 weights stay as stored, "
                          "about half the memory. Nothing was loaded.")


def check_state(model, state, origin, folders):
    """Every tensor used, every parameter filled, shapes equal; else a CheckpointError naming the tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    check_names(expected, {k: f"{origin[k][1]!r} in {origin[k][0]}" for k in state}, " + ".join(map(str, folders)))
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{origin[k][0]}: tensor {origin[k][1]!r} has shape {list(state[k].shape)}, "
                                  f"the configs imply {list(shape)}")
        if not state[k].is_floating_point():
            raise CheckpointError(f"{origin[k][0]}: tensor {origin[k][1]!r} has dtype {state[k].dtype}, "
                                  f"expected a floating-point tensor")


# --- into a llava-hf folder -----------------------------------------------------------------------

def convert_original(folder, clip_folder, out_folder, tokenizer=None, dtype=None, max_shard_bytes=5 * 10**9):
    """Write a llava-hf folder for an original checkpoint: config.json, safetensors (sharded above
    max_shard_bytes), processor files (`write_processor_files`); `minillava.load` and transformers load it.

    dtype None keeps the original's torch_dtype (float16 for liuhaotian/llava-v1.5-*; openai's fp32 CLIP
    is cast to it, as llava-hf did). tokenizer: a tokenizer.json to use when the original folder has none.
    """
    folder, clip_folder, out = Path(folder), Path(clip_folder), Path(out_folder)
    cfg, config = llava_hf_config(folder, clip_folder)
    dtype = resolve_dtype(dtype or config.dtype, torch.device("cpu"))
    with torch.device("meta"):
        check = Llava(config)
    state, origin = hub_state(folder, clip_folder, config)
    check_state(check, state, origin, (folder, clip_folder))
    out.mkdir(parents=True, exist_ok=True)
    cfg["torch_dtype"] = cfg["text_config"]["torch_dtype"] = str(dtype).removeprefix("torch.")
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                                                "pad_token_id": config.pad_token_id})
    save_weights({k: v.to(dtype) for k, v in state.items()}, out, max_shard_bytes)
    write_processor_files(folder, clip_folder, out, tokenizer)
    return out


def write_processor_files(folder, clip_folder, out_folder, tokenizer=None):
    """The llava-hf processor and tokenizer files for an original checkpoint, into out_folder.

    As llava-hf: `<image>` and `<pad>` added after the vocabulary, pad_token `<pad>`, left padding, its
    chat template. Unlike llava-hf: `image_aspect_ratio: "pad"` becomes `LlavaImageProcessor` with
    `do_pad: true`, the original's square padding (transformers and minillava.processor both honour it).
    tokenizer.json comes from `tokenizer`, else from the original folder; the liuhaotian repos ship only
    sentencepiece's tokenizer.model, which is copied but which minillava cannot read: then pass the
    tokenizer.json of llava-hf/llava-1.5-7b-hf or of Llama-2 (the same vocabulary).
    """
    folder, clip_folder, out = Path(folder), Path(clip_folder), Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    _, config = llava_hf_config(folder, clip_folder)
    pad = read_json(folder / "config.json").get("image_aspect_ratio") == "pad"
    clip_pre = _read_json_or(clip_folder / "preprocessor_config.json", {})
    mean, std = clip_pre.get("image_mean", CLIP_MEAN), clip_pre.get("image_std", CLIP_STD)
    write_processor_configs(out, config, mean, std, pad)

    n = config.image_token_index
    added = {IMAGE_TOKEN: n, "<pad>": n + 1}
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    source = Path(tokenizer) if tokenizer else folder / "tokenizer.json"
    if source.is_file():
        tok = read_json(source)
        have = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
        if len(tok["model"]["vocab"]) != n and set(added) - set(have):
            raise TokenizerError(f"{source}: {len(tok['model']['vocab'])} tokens, but the model has {n}")
        for content, i in added.items():
            if have.get(content, i) != i:
                raise TokenizerError(f"{source}: {content!r} is id {have[content]}, the model expects {i}")
            if content not in have:
                tok["added_tokens"].append({"id": i, "content": content, **token})
        (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    else:
        warnings.warn(f"{folder}: no tokenizer.json, so {out} has none and minillava cannot load its processor; "
                      f"pass tokenizer= the tokenizer.json of llava-hf/llava-1.5-7b-hf (same Llama-2 vocabulary)")
    if (folder / "tokenizer.model").is_file():
        shutil.copyfile(folder / "tokenizer.model", out / "tokenizer.model")
    tok_config = _read_json_or(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "legacy": False, "tokenizer_class": "LlamaTokenizer"})
    decoder = tok_config.setdefault("added_tokens_decoder", {
        "0": {"content": "<unk>", **token}, "1": {"content": "<s>", **token}, "2": {"content": "</s>", **token}})
    decoder.update({str(i): {"content": c, **token} for c, i in added.items()})
    tok_config.update(pad_token="<pad>", padding_side="left", processor_class="LlavaProcessor")
    write_json(out / "tokenizer_config.json", tok_config)
    special = _read_json_or(folder / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    write_json(out / "special_tokens_map.json", {**special, "pad_token": "<pad>"})
    write_json(out / "added_tokens.json", added)
    return out


def _read_json_or(path, default):
    """config.read_json, or `default` for a missing file (the original repositories omit some)."""
    return read_json(path) if Path(path).is_file() else default
