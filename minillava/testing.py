"""Tiny random LLaVA checkpoints for other projects' tests, written without transformers, offline, in
well under a second.

    folder = minillava.testing.write_checkpoint(tmp_path / "gqa", "gqa", seed=0)
    model, processor = minillava.load(folder)                   # and transformers loads it too
    llava, clip = minillava.testing.write_original(tmp_path / "orig")   # liuhaotian + openai CLIP layout

Each folder has the files of a llava-hf download (llava-hf/llava-1.5-7b-hf): a hub-style config.json that
leaves most fields to their defaults, model.safetensors (or shards + model.safetensors.index.json) with the
hub key names, generation_config.json, and the tokenizer and processor files of the embedded demo (a real
byte-fallback BPE tokenizer with `<image>` and `<pad>` added after its vocabulary, as llava-hf adds them to
Llama-2's). Only the sizes are small and the weights random: a vision tower of 3 layers on 56-pixel
images (16 patches), a decoder of 2 layers. Weights are scaled so that every parameter matters (norm gains
away from 1, non-zero biases, logits of order 1), and the same seed writes the same bytes.
"""
import json
import math
import shutil
from pathlib import Path

import torch

from .checkpoint import padded_vocab_size, save_weights, write_json, write_processor_configs
from .config import LlavaConfig
from .images import CLIP_MEAN, CLIP_STD
from .llava import Llava

DEMO = Path(__file__).parent / "demo"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# the demo tokenizer's n tokens, then <image> = n and <pad> = n + 1 (785 and 786 in the current demo)
IMAGE_TOKEN_INDEX = json.loads((DEMO / "added_tokens.json").read_text(encoding="utf-8"))["<image>"]
PAD_TOKEN_ID = IMAGE_TOKEN_INDEX + 1
VOCAB = padded_vocab_size(IMAGE_TOKEN_INDEX)  # a multiple of 64, as llava-hf padded Llama-2's 32000 to 32064

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 56, "patch_size": 14, "model_type": "clip_vision_model", "projection_dim": 16}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": VOCAB, "model_type": "llama"}

# The cases a port must get right: name -> (what it exercises, what its config.json changes)
VARIANTS = {
    "mha": ("Llama with multi-head attention, everything else left to the defaults (llava-1.5-7b-hf)", {}),
    "gqa": ("Llama with grouped-query attention (2 key/value heads for 4), rope_theta 500000, rms_norm_eps 1e-6",
            {"text_config": dict(TEXT, num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-6)}),
    "mistral": ("Mistral (bakLlava) with a sliding window of 8 tokens, shorter than any prompt with an image",
                {"text_config": dict(TEXT, model_type="mistral", num_key_value_heads=2, sliding_window=8,
                                     intermediate_size=96)}),
    "multilayer": ("vision_feature_layer [-2, -3] (two CLIP layers concatenated) with the `full` strategy "
                   "(CLS token kept: 17 image tokens)",
                   {"vision_feature_layer": [-2, -3], "vision_feature_select_strategy": "full"}),
    "tied": ("tie_word_embeddings: lm_head is the embedding matrix and is not stored",
             {"tie_word_embeddings": True, "text_config": dict(TEXT, tie_word_embeddings=True)}),
    "no_projector_bias": ("multimodal_projector_bias false: the projector's Linear layers have no bias",
                          {"multimodal_projector_bias": False}),
}


def hub_config(variant="mha", dtype="float32"):
    """The config.json of a variant, as a dict (llava-hf's fields; most sizes given, the rest left to defaults)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}, expected one of {', '.join(VARIANTS)}")
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
           "image_token_index": IMAGE_TOKEN_INDEX, "model_type": "llava", "pad_token_id": PAD_TOKEN_ID,
           "projector_hidden_act": "gelu", "text_config": dict(TEXT), "tie_word_embeddings": False,
           "torch_dtype": dtype, "vision_config": dict(VISION), "vocab_size": VOCAB,
           "transformers_version": "4.36.0.dev0"}
    cfg.update(json.loads(json.dumps(VARIANTS[variant][1])))
    return cfg


def random_state(config, seed=0, dtype=torch.float32):
    """{hub key: random tensor} for every parameter of the model `config` describes (the module tree is the
    key layout). Scaled so every parameter matters: unit-variance linear outputs, norm gains 1 +- 0.3,
    biases 0.1, embeddings 0.7. A tied lm_head is the embeddings' parameter: left out, as save_pretrained
    leaves it out."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Llava(config).named_parameters()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in sorted(shapes.items()):
        r = torch.randn(shape, generator=g)
        if name.endswith("bias"):
            t = 0.1 * r
        elif len(shape) == 1 and "norm" in name:  # RMSNorm / LayerNorm gains
            t = 1.0 + 0.3 * r
        elif "embed" in name or len(shape) == 1:  # token, position and class embeddings
            t = 0.7 * r
        else:  # linear and conv weights
            t = r / math.sqrt(math.prod(shape[1:]))
        state[name] = t.to(dtype)
    return state


def write_checkpoint(folder, variant="mha", seed=0, dtype=torch.float32, max_shard_bytes=5 * 10**9):
    """Write a tiny random llava-hf checkpoint folder of a variant (see VARIANTS) and return its Path.
    dtype: of the stored weights (and config.json's torch_dtype). max_shard_bytes: shard above this size
    (e.g. 100_000 gives several shards and an index, as a 7b download has)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype_name = str(dtype).removeprefix("torch.")
    cfg = hub_config(variant, dtype_name)
    config = LlavaConfig.from_dict(cfg, source=f"minillava.testing variant {variant!r}")
    write_json(folder / "config.json", cfg)
    write_json(folder / "generation_config.json", {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                                                   "pad_token_id": PAD_TOKEN_ID})
    save_weights(random_state(config, seed, dtype), folder, max_shard_bytes)
    for name in TOKENIZER_FILES:
        shutil.copyfile(DEMO / name, folder / name)
    write_processor_configs(folder, config)  # preprocessor_config.json, processor_config.json, chat_template.json
    return folder


# --- the original liuhaotian layout -------------------------------------------------------------------------

def write_original(folder, seed=0, max_shard_bytes=100_000):
    """The "mha" variant as the original release stores it: (llava folder, clip folder) under `folder`.

    llava/ is liuhaotian/llava-v1.5-7b: `pytorch_model-0000N-of-0000M.bin` shards (torch.save of plain
    tensor dicts) + pytorch_model.bin.index.json, keys model.layers.N.*, lm_head.weight,
    model.mm_projector.{0,2}.*, the rotary inv_freq buffers transformers 4.31 saved, a vocabulary without
    `<image>` and `<pad>` (IMAGE_TOKEN_INDEX rows), the original config.json (mm_vision_tower, mm_vision_select_layer,
    image_aspect_ratio "pad") and Vicuna's tokenizer files. clip/ is openai/clip-vit-large-patch14-336:
    the whole CLIPModel (a text tower and projections LLaVA never uses), a CLIPConfig, the older integer
    preprocessor_config.json. `minillava.original.load_original(llava, clip)` and `convert_original` read it.
    """
    folder = Path(folder)
    llava_dir, clip_dir = folder / "llava", folder / "clip"
    llava_dir.mkdir(parents=True, exist_ok=True)
    clip_dir.mkdir(exist_ok=True)
    hub = random_state(LlavaConfig.from_dict(hub_config("mha")), seed)
    t, v = TEXT, VISION
    llava, clip = {}, {}
    for key, x in hub.items():
        for old, new in (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                         ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
                         ("multi_modal_projector.linear_2.", "model.mm_projector.2.")):
            if key.startswith(old):
                name = new + key[len(old):]
                vocabulary = name.endswith(("embed_tokens.weight", "lm_head.weight"))
                llava[name] = x[:IMAGE_TOKEN_INDEX].clone() if vocabulary else x
                break
        else:  # vision_tower.vision_model.* -> vision_model.*
            clip[key.removeprefix("vision_tower.")] = x
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    for i in range(t["num_hidden_layers"]):
        llava[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    _save_bins(llava, llava_dir, max_shard_bytes)
    write_json(llava_dir / "config.json", {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": t["hidden_size"],
        "intermediate_size": t["intermediate_size"], "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"], "num_key_value_heads": t["num_attention_heads"],
        "max_position_embeddings": t["max_position_embeddings"], "max_length": 4096, "rms_norm_eps": t["rms_norm_eps"],
        "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "vocab_size": IMAGE_TOKEN_INDEX, "rope_scaling": None, "pretraining_tp": 1, "tie_word_embeddings": False,
        "torch_dtype": "float32", "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "mm_hidden_size": v["hidden_size"], "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "freeze_mm_mlp_adapter": False, "use_mm_proj": True, "use_cache": True, "transformers_version": "4.31.0"})
    _write_vicuna_tokenizer(llava_dir)
    _write_clip(clip, clip_dir, seed)
    return llava_dir, clip_dir


def _save_bins(state, out, max_shard_bytes):
    shards, size = [[]], 0
    for k in sorted(state):
        if shards[-1] and size + state[k].nbytes > max_shard_bytes:
            shards, size = shards + [[]], 0
        shards[-1].append(k)
        size += state[k].nbytes
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save({k: state[k].contiguous() for k in keys}, out / name)
        weight_map.update(dict.fromkeys(keys, name))
    write_json(out / "pytorch_model.bin.index.json", {"metadata": {"total_size": sum(x.nbytes for x in state.values())},
                                                      "weight_map": weight_map})


def _write_vicuna_tokenizer(out):
    """The demo tokenizer as Vicuna ships it: no `<image>`, no `<pad>`, right padding, no pad token."""
    tok = json.loads((DEMO / "tokenizer.json").read_text(encoding="utf-8"))
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["content"] not in ("<image>", "<pad>")]
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048, "pad_token": None,
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "use_fast": False})
    write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def _write_clip(vision, out, seed):
    """openai's CLIP folder: the vision weights given, plus a one-layer random text tower and the projections."""
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(seed + 1)
    d, proj, n_pos, vocab = 16, VISION["projection_dim"], 8, 100
    text = {"text_model.embeddings.token_embedding.weight": (vocab, d),
            "text_model.embeddings.position_embedding.weight": (n_pos, d),
            "text_model.final_layer_norm.weight": (d,), "text_model.final_layer_norm.bias": (d,)}
    for part, shape in [("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (d, d)), ("self_attn.v_proj", (d, d)),
                        ("self_attn.out_proj", (d, d)), ("layer_norm1", (d,)), ("layer_norm2", (d,)),
                        ("mlp.fc1", (2 * d, d)), ("mlp.fc2", (d, 2 * d))]:
        text[f"text_model.encoder.layers.0.{part}.weight"] = shape
        text[f"text_model.encoder.layers.0.{part}.bias"] = shape[:1]
    text.update({"visual_projection.weight": (proj, VISION["hidden_size"]), "text_projection.weight": (proj, d),
                 "logit_scale": ()})
    state = {k: 0.02 * torch.randn(s, generator=g) for k, s in sorted(text.items())}
    state.update(vision)
    save_file({k: x.contiguous() for k, x in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    text_config = {"hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "vocab_size": vocab, "max_position_embeddings": n_pos, "model_type": "clip_text_model"}
    write_json(out / "config.json", {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": proj, "text_config": text_config,
        "vision_config": dict(VISION, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "vision_config_dict": dict(VISION), "torch_dtype": "float32"})
    write_json(out / "preprocessor_config.json", {  # openai's older format: integers, not dicts
        "crop_size": VISION["image_size"], "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": VISION["image_size"]})


def image(seed=0, size=(80, 64)):
    """A small seeded RGB test picture (smooth gradients and a few blocks, so the resize and crop matter)."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    w, h = size
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    rgb = torch.stack([x, y, (x + y) / 2]) * 0.6 + 0.4 * torch.rand(3, 1, 1, generator=g)
    for _ in range(3):
        c, r = int(torch.randint(0, w - 16, (1,), generator=g)), int(torch.randint(0, h - 16, (1,), generator=g))
        rgb[:, r:r + 16, c:c + 16] = torch.rand(3, 1, 1, generator=g)
    return Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
