"""Reading an original LLaVA-1.5 checkpoint (`.bin` shards + the openai CLIP folder) and converting it to
a llava-hf folder. The key renaming, the vocabulary padding and the pickle policy are explained in
minillava/original/__init__.py."""

import json
import pickle
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..checkpoint import (
    assign_weights,
    check_names,
    padded_vocab_size,
    save_weights,
    weight_files,
    write_json,
    write_processor_configs,
)
from ..config import LlavaConfig, VisionConfig, read_json
from ..errors import CheckpointError, ConfigError, DeviceError, TokenizerError
from ..images import CLIP_MEAN, CLIP_STD
from ..llava import Llava
from ..loading import memory_available, memory_needed, resolve_device, resolve_dtype

IMAGE_TOKEN = "<image>"
# LlamaConfig fields an original config.json carries that belong in llava-hf's text_config
TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "hidden_act",
             "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "torch_dtype")
# What the openai CLIP checkpoint holds besides the vision tower (LLaVA never uses it), and a buffer
CLIP_UNUSED = ("text_model.", "logit_scale", "visual_projection.weight", "text_projection.weight",
               "vision_model.embeddings.position_ids")


# --- reading the files ---------------------------------------------------------------------------

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


def _read_json(path, default=None):
    """config.read_json, or `default` (when given) for a missing file."""
    if default is not None and not Path(path).is_file():
        return default
    return read_json(path)


def _bin_files(folder):
    """The `.bin` shards named by pytorch_model.bin.index.json, or the single pytorch_model.bin."""
    return weight_files(folder, index="pytorch_model.bin.index.json", single="pytorch_model.bin")


def original_key(key):
    """Original LLaVA key -> llava-hf hub key; None = a buffer we recompute (RoPE inv_freq)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    for old, new in (("model.mm_projector.0.", "multi_modal_projector.linear_1."),
                     ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
                     ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key  # unknown: left as is, so the strict check names it


def clip_key(key):
    """openai CLIP key -> llava-hf hub key; None = a part LLaVA does not use."""
    if key.startswith(CLIP_UNUSED):
        return None
    if key.startswith("vision_model."):
        return "vision_tower." + key
    return key  # unknown: left as is, so the strict check names it


# --- config ---------------------------------------------------------------------------------------

def llava_hf_config(folder, clip_folder):
    """The llava-hf `config.json` (a dict) equivalent to an original config.json plus the CLIP config.json."""
    src = Path(folder) / "config.json"
    orig, clip = _read_json(src), _read_json(Path(clip_folder) / "config.json")
    if orig.get("model_type") not in ("llava", "llava_llama") or "mm_vision_tower" not in orig:
        raise ConfigError(f"{src}: not an original LLaVA config (model_type 'llava' with mm_vision_tower expected)")
    unsupported = {"mm_projector_type": orig.get("mm_projector_type", "linear") != "mlp2x_gelu",  # LLaVA-1.0: linear
                   "mm_use_im_start_end": bool(orig.get("mm_use_im_start_end")),
                   "mm_use_im_patch_token": bool(orig.get("mm_use_im_patch_token")),
                   "image_aspect_ratio": orig.get("image_aspect_ratio") == "anyres",  # LLaVA-1.6
                   "tie_word_embeddings": bool(orig.get("tie_word_embeddings"))}
    for name, bad in unsupported.items():
        if bad:
            raise ConfigError(f"{src}: {name} = {orig.get(name)!r} is not LLaVA-1.5 (expected mm_projector_type "
                              f"'mlp2x_gelu', no im_start/im_patch tokens, image_aspect_ratio 'pad', untied)")
    strategy = {"patch": "default", "cls_patch": "full"}.get(orig.get("mm_vision_select_feature", "patch"))
    if strategy is None:
        raise ConfigError(f"{src}: mm_vision_select_feature {orig['mm_vision_select_feature']!r}, "
                          f"expected 'patch' or 'cls_patch'")
    if clip.get("model_type") == "clip":  # CLIPConfig; old files also carry vision_config_dict, which wins
        vision = clip.get("vision_config_dict") or clip.get("vision_config") or {}
    elif clip.get("model_type") == "clip_vision_model":
        vision = clip
    else:
        raise ConfigError(f"{Path(clip_folder) / 'config.json'}: model_type {clip.get('model_type')!r}, "
                          f"expected a CLIP checkpoint ('clip' or 'clip_vision_model')")
    vision = {k: v for k, v in vision.items() if k in VisionConfig.__dataclass_fields__}
    vision["model_type"] = "clip_vision_model"
    n = orig.get("vocab_size", 32000)
    vocab = padded_vocab_size(n)
    text = {k: orig[k] for k in TEXT_KEYS if k in orig}
    text.update(model_type="llama", vocab_size=vocab)
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": n,
           "model_type": "llava", "pad_token_id": n + 1, "projector_hidden_act": "gelu", "text_config": text,
           "tie_word_embeddings": False, "torch_dtype": orig.get("torch_dtype"), "vision_config": vision,
           "vision_feature_layer": orig.get("mm_vision_select_layer", -2),
           "vision_feature_select_strategy": strategy, "vocab_size": vocab}
    config = LlavaConfig.from_dict(cfg, source=str(src))
    cfg["image_seq_length"] = config.vision_config.num_patches + (strategy == "full")
    width = config.vision_config.hidden_size * len(config.feature_layers)
    if orig.get("mm_hidden_size", width) != width:
        raise ConfigError(f"{src}: mm_hidden_size {orig['mm_hidden_size']} does not match the CLIP tower in "
                          f"{clip_folder} (hidden_size {config.vision_config.hidden_size})")
    return cfg, config


# --- weights --------------------------------------------------------------------------------------

def hub_state(folder, clip_folder, config):
    """{llava-hf hub key: tensor} for the original checkpoint plus CLIP, with the vocabulary padded.

    Returns (state, origin), origin[key] = (file, key in that file), for error messages.
    """
    folder, clip_folder = Path(folder), Path(clip_folder)
    state, origin = {}, {}
    files = [(p, read_bin, original_key) for p in _bin_files(folder)]
    if (clip_folder / "model.safetensors").is_file():
        files.append((clip_folder / "model.safetensors", _read_safetensors, clip_key))
    else:  # older CLIP snapshots have only pytorch_model.bin: read as safely as the LLaVA shards
        files += [(p, read_bin, clip_key) for p in _bin_files(clip_folder)]
    for path, read, rename in files:
        for key, t in read(path).items():
            name = rename(key)
            if name in state:
                raise CheckpointError(f"{path}: tensor {key!r} is also stored in {origin[name][0]}")
            if name is not None:
                state[name], origin[name] = t, (path, key)
    n, vocab = config.image_token_index, config.text_config.vocab_size
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        t = state.get(name)
        if t is None:
            continue  # reported by the strict check
        if t.ndim != 2 or t.shape[0] != n:
            raise CheckpointError(f"{origin[name][0]}: tensor {origin[name][1]!r} has shape {list(t.shape)}, "
                                  f"config.json implies {n} rows (vocab_size)")
        mean = t.float().mean(0, keepdim=True).to(t.dtype)  # new rows: the mean row (never the top logit)
        state[name] = torch.cat([t, mean.expand(vocab - n, -1)])
    return state, origin


def _read_safetensors(path):
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from None


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


# --- processor files ------------------------------------------------------------------------------

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
    pad = _read_json(folder / "config.json").get("image_aspect_ratio") == "pad"
    clip_pre = _read_json(clip_folder / "preprocessor_config.json", {})
    mean, std = clip_pre.get("image_mean", CLIP_MEAN), clip_pre.get("image_std", CLIP_STD)
    write_processor_configs(out, config, mean, std, pad)

    n = config.image_token_index
    added = {IMAGE_TOKEN: n, "<pad>": n + 1}
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    source = Path(tokenizer) if tokenizer else folder / "tokenizer.json"
    if source.is_file():
        tok = _read_json(source)
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
    tok_config = _read_json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "legacy": False, "tokenizer_class": "LlamaTokenizer"})
    decoder = tok_config.setdefault("added_tokens_decoder", {
        "0": {"content": "<unk>", **token}, "1": {"content": "<s>", **token}, "2": {"content": "</s>", **token}})
    decoder.update({str(i): {"content": c, **token} for c, i in added.items()})
    tok_config.update(pad_token="<pad>", padding_side="left", processor_class="LlavaProcessor")
    write_json(out / "tokenizer_config.json", tok_config)
    special = _read_json(folder / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    write_json(out / "special_tokens_map.json", {**special, "pad_token": "<pad>"})
    write_json(out / "added_tokens.json", added)
    return out
