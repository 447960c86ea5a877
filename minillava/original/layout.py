"""The original release in the llava-hf layout: its keys renamed, its config rewritten as llava-hf's
config.json, its vocabulary padded for the `<image>` and `<pad>` ids (why the new rows are the mean row:
minillava/original/__init__.py).

It follows transformers' models/llava/convert_llava_weights_to_hf.py: the renaming of its
`KEYS_TO_MODIFY_MAPPING`, the vocabulary resized to 32000 + 2 rows padded to a multiple of 64 (new rows
sampled around the mean row there, the mean row itself here), and the CLIP tower read from its own folder
(the script wants a state dict saved with the tower loaded). The original's settings come from its
config.json: `mm_vision_select_layer` and `mm_vision_select_feature` as haotian-liu/LLaVA's
llava/model/multimodal_encoder/clip_encoder.py (`CLIPVisionTower.feature_select`) uses them,
`mm_projector_type` as llava/model/multimodal_projector/builder.py (`build_vision_projector`) does.
"""

from pathlib import Path

import torch

from ..checkpoint import padded_vocab_size
from ..config import LlavaConfig, VisionConfig, read_json
from ..errors import CheckpointError, ConfigError
from .reading import bin_files, read_bin, read_safetensors

# LlamaConfig fields an original config.json carries that belong in llava-hf's text_config
TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "hidden_act",
             "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "torch_dtype")
# What the openai CLIP checkpoint holds besides the vision tower (LLaVA never uses it), and a buffer
CLIP_UNUSED = ("text_model.", "logit_scale", "visual_projection.weight", "text_projection.weight",
               "vision_model.embeddings.position_ids")


# --- keys -----------------------------------------------------------------------------------------

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
    orig, clip = read_json(src), read_json(Path(clip_folder) / "config.json")
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
    files = [(p, read_bin, original_key) for p in bin_files(folder)]
    if (clip_folder / "model.safetensors").is_file():
        files.append((clip_folder / "model.safetensors", read_safetensors, clip_key))
    else:  # older CLIP snapshots have only pytorch_model.bin: read as safely as the LLaVA shards
        files += [(p, read_bin, clip_key) for p in bin_files(clip_folder)]
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
