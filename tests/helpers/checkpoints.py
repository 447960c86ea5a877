"""Tiny random LLaVA checkpoints in the official llava-hf file layout, built with transformers.

The hub cannot be reached here, so tests build folders that look exactly like a download of
llava-hf/llava-1.5-7b-hf (hub key names, single or sharded safetensors with an index, a minimal
hub-style config.json that leaves most fields to their defaults, tokenizer and processor files),
only with small shapes and random weights. Weights are rescaled so every parameter matters: norm
weights away from 1, non-zero biases, logits of order 1.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
               "image_size": 56, "patch_size": 14, "model_type": "clip_vision_model", "projection_dim": 16}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32064, "model_type": "llama"}

# The configurations the issue asks for; each is a config.json as a hub repo would hold it.
CONFIGS = {
    # MHA Llama like llava-1.5-7b: num_key_value_heads and rope_theta left to defaults
    "mha": {"text_config": dict(TINY_TEXT)},
    # GQA Llama with a non-default rope theta and rms eps
    "gqa": {"text_config": dict(TINY_TEXT, num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-6)},
    # Mistral with GQA (bakLlava); a short sliding window so the window is actually exercised
    "mistral": {"text_config": dict(TINY_TEXT, model_type="mistral", num_key_value_heads=2, sliding_window=24,
                                    intermediate_size=96)},
    # vision_feature_layer as a list, "full" strategy (CLS kept), no projector bias
    "multilayer": {"text_config": dict(TINY_TEXT, num_key_value_heads=1), "vision_feature_layer": [-2, -3],
                   "vision_feature_select_strategy": "full", "multimodal_projector_bias": False},
}


def hub_config(name, **overrides):
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
           "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
           "tie_word_embeddings": False, "torch_dtype": "float32", "vision_config": dict(TINY_VISION),
           "vocab_size": 32064, "transformers_version": "4.36.0.dev0"}
    cfg.update(json.loads(json.dumps(CONFIGS[name])))
    cfg.update(overrides)
    return cfg


def randomize_(model, seed=0):
    """Rescale a freshly initialised transformers model so every parameter visibly matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * r)
            elif p.ndim == 1 and ("norm" in name):  # RMSNorm / LayerNorm gains
                p.copy_(1.0 + 0.3 * r)
            elif "embed" in name or p.ndim == 1:  # token, position, class embeddings
                p.copy_(0.7 * r)
            else:  # linear and conv weights: unit-variance outputs
                p.copy_(r / (p[0].numel() ** 0.5))


def hub_key(name):
    """transformers 5 in-memory parameter name -> the key llava-hf stores on the hub."""
    for old, new in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    raise KeyError(name)


def build(folder, name="mha", layout="hub", shards=1, seed=0, dtype=torch.float32, processor=True, **overrides):
    """Write a checkpoint folder and return it. layout: 'hub' (llava-hf keys), 'saved' (what
    transformers 5 `save_pretrained` writes for a fresh model), or 'raw' (in-memory names)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_dict = hub_config(name, **overrides)
    if "torch_dtype" not in overrides:  # as save_pretrained writes it: the dtype the weights are saved in
        cfg_dict["torch_dtype"] = str(dtype).removeprefix("torch.")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in cfg_dict.items() if k != "model_type"}))
    randomize_(model, seed)
    model = model.to(dtype)
    if layout == "saved":
        model.save_pretrained(folder)  # transformers' own writer (single file, "dtype", rope_parameters)
    else:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if layout == "hub":
            state = {hub_key(k): v for k, v in state.items()}
        write_safetensors(folder, state, shards)
        (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2))
        (folder / "generation_config.json").write_text(json.dumps(
            {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}))
    if processor:
        try:
            from tests.helpers.tokenizer_files import write_processor_files
        except ImportError:
            pass
        else:
            v = cfg_dict["vision_config"]
            write_processor_files(folder, image_size=v["image_size"], patch_size=v["patch_size"],
                                  strategy=cfg_dict.get("vision_feature_select_strategy", "default"))
    return folder


def write_safetensors(folder, state, shards=1):
    """One model.safetensors, or `shards` files plus model.safetensors.index.json, as the hub has them."""
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    keys = sorted(state)
    groups = [keys[i::shards] for i in range(shards)]
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in group}, str(folder / fname), metadata={"format": "pt"})
        for k in group:
            weight_map[k] = fname
            total += state[k].numel() * state[k].element_size()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def reference(folder, dtype=torch.float32, attn="sdpa"):
    """The reference: transformers' LlavaForConditionalGeneration loaded from the same folder."""
    from transformers import LlavaForConditionalGeneration
    return LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype, attn_implementation=attn).eval()


def sparse_checkpoint(folder, config, dtype="F16", shard_bytes=5 * 10**9):
    """A full-size checkpoint folder whose safetensors files are sparse: real headers naming every tensor of the
    model `config` (a config.json dict) describes, in shards of at most shard_bytes as on the hub, and no data
    written (the files read as zeros and cost no disk). For what must happen before any weight is read (the
    memory check) at real sizes."""
    import struct

    from minillava import Llava, LlavaConfig
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = Llava(LlavaConfig.from_dict(config))
    size = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    shards = [{}]
    for name, p in model.state_dict().items():
        if shards[-1] and sum(n for _, n in shards[-1].values()) + p.numel() * size > shard_bytes:
            shards.append({})
        shards[-1][name] = (list(p.shape), p.numel() * size)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for fname, shard in zip(names, shards):
        header, offset = {}, 0
        for name, (shape, n) in shard.items():
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + offset)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: fname for fname, shard in zip(names, shards) for k in shard}}))
    return folder
