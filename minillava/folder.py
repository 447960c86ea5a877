"""Writing a checkpoint folder in the llava-hf layout: the part `train.py` (the demo) and `original.py`
(converted liuhaotian checkpoints) share. The folder they write is what `minillava.load` and transformers'
`LlavaForConditionalGeneration` + `AutoProcessor` read (weights.md lists every file).
"""
import json
from pathlib import Path

from safetensors.torch import save_file

from .chat import LLAVA_CHAT_TEMPLATE

# OpenAI CLIP's pixel statistics, the defaults of CLIPImageProcessor
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


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
