"""The original liuhaotian LLaVA format (minillava.original) against the llava-hf checkpoint it came from.

A tiny random llava-hf checkpoint is written out the way liuhaotian/llava-v1.5-7b is stored
(`.bin` shards without the CLIP tower, original key names, vocab 32000, rotary inv_freq buffers)
plus an openai-layout CLIP folder; loading or converting it must give the logits of the original, the
original token ids around `<image>`, the original square padding, and never unpickle code.
"""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from minillava import (
    CheckpointError,
    ConfigError,
    DeviceError,
    LlavaConfig,
    PromptError,
    load_model,
)
from minillava.chat import VICUNA_V1_SYSTEM
from minillava.original import (
    convert_original,
    load_original,
    prepare,
    read_bin,
    tokenize_original,
)
from minillava.processor import Processor
from tests.helpers import checkpoints as C
from tests.helpers.tokenizer_files import CLIP_MEAN, CLIP_STD, TOKENIZERS
from tests.test_llava import prompt

VARIANTS = {  # (checkpoints.build name, overrides, original mm_vision_select_feature)
    "patch": ("mha", {}, "patch"),  # llava-v1.5-7b: MHA, layer -2, CLS dropped
    "cls_patch": ("gqa", {"vision_feature_select_strategy": "full", "vision_feature_layer": -3}, "cls_patch"),
}


def original_key(hub):
    """llava-hf hub key -> (which folder, key in the original LLaVA / openai CLIP files)."""
    for old, new in (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                     ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
                     ("multi_modal_projector.linear_2.", "model.mm_projector.2.")):
        if hub.startswith(old):
            return "llava", new + hub[len(old):]
    assert hub.startswith("vision_tower.vision_model."), hub
    return "clip", hub[len("vision_tower."):]


def write_original(hf, root, feature="patch", shards=2):
    """The llava-hf folder `hf` as liuhaotian/llava-v1.5-7b + openai/clip-vit-large-patch14-336 store it."""
    from transformers import CLIPConfig, CLIPModel
    llava_dir, clip_dir = root / "llava", root / "clip"
    llava_dir.mkdir(parents=True)
    clip_dir.mkdir()
    hf_cfg = json.loads((hf / "config.json").read_text())
    t, v = hf_cfg["text_config"], hf_cfg["vision_config"]
    parts = {"llava": {}, "clip": {}}
    for k, x in load_file(str(hf / "model.safetensors")).items():
        where, key = original_key(k)
        parts[where][key] = x[:32000].clone() if key in ("model.embed_tokens.weight", "lm_head.weight") else x
    hd = t["hidden_size"] // t["num_attention_heads"]
    theta = t.get("rope_theta", 10000.0)
    for i in range(t["num_hidden_layers"]):  # the buffer transformers 4.31 saved with every Llama
        inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
        parts["llava"][f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq
    keys = sorted(parts["llava"])
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: parts["llava"][k] for k in keys[s::shards]}, llava_dir / name)
        weight_map.update(dict.fromkeys(keys[s::shards], name))
        total += sum(parts["llava"][k].numel() * 4 for k in keys[s::shards])
    (llava_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                        "weight_map": weight_map}))
    layer = hf_cfg.get("vision_feature_layer", -2)
    config = {  # liuhaotian/llava-v1.5-7b's config.json with tiny sizes
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": t["hidden_size"],
        "intermediate_size": t["intermediate_size"], "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"], "num_key_value_heads": t.get("num_key_value_heads", 4),
        "max_position_embeddings": 4096, "max_length": 4096, "rms_norm_eps": t["rms_norm_eps"], "rope_theta": theta,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "vocab_size": 32000,
        "rope_scaling": None, "pretraining_tp": 1, "tie_word_embeddings": False, "torch_dtype": "float32",
        "image_aspect_ratio": "pad", "image_grid_pinpoints": None, "mm_hidden_size": v["hidden_size"],
        "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None, "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": feature, "mm_vision_select_layer": layer,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "freeze_mm_mlp_adapter": False, "use_mm_proj": True,
        "use_cache": True, "transformers_version": "4.31.0"}
    (llava_dir / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(TOKENIZERS["llama2"], llava_dir / "tokenizer.json")  # Vicuna's tokenizer: no <image>, no <pad>
    (llava_dir / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048, "pad_token": None,
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "use_fast": False}))

    # openai CLIP: the whole CLIPModel (text tower, projections, logit_scale) with our vision weights in it
    clip_cfg = {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 16,
                "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "vocab_size": 100, "max_position_embeddings": 8,
                                "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
                                "model_type": "clip_text_model"},
                "vision_config": dict(v, hidden_act="quick_gelu", layer_norm_eps=1e-5), "vision_config_dict": dict(v)}
    clip = CLIPModel(CLIPConfig(**{k: x for k, x in clip_cfg.items() if k not in ("model_type", "vision_config_dict")}))
    state = {k: x.contiguous() for k, x in clip.state_dict().items()}
    assert set(parts["clip"]) <= set(state)
    state.update(parts["clip"])
    save_file(state, str(clip_dir / "model.safetensors"), metadata={"format": "pt"})
    (clip_dir / "config.json").write_text(json.dumps(clip_cfg, indent=2))
    (clip_dir / "preprocessor_config.json").write_text(json.dumps({  # openai's older format: ints, not dicts
        "crop_size": v["image_size"], "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": v["image_size"]}))
    return llava_dir, clip_dir


@pytest.fixture(scope="module", params=list(VARIANTS))
def ckpt(request, tmp_path_factory):
    """(llava-hf folder, original folder, CLIP folder, transformers model on the llava-hf folder)."""
    name, overrides, feature = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf = C.build(root / "hf", name, processor=False, seed=13, **overrides)
    orig, clip = write_original(hf, root, feature)
    return hf, orig, clip, C.reference(hf)


@pytest.fixture(scope="module")
def converted(ckpt, tmp_path_factory):
    return convert_original(ckpt[1], ckpt[2], tmp_path_factory.mktemp("converted") / "out")


@torch.no_grad()
def test_load_original_equals_llava_hf(ckpt):
    hf, orig, clip, ref = ckpt
    ours = load_original(orig, clip)
    ids, pv = prompt(ours, 1, text_len=40, seed=3)
    want, got = ref(input_ids=ids, pixel_values=pv).logits, ours(ids, pv)
    assert got.shape == want.shape == (1, ids.shape[1], 32064)
    assert want.abs().max() > 1
    assert (got[..., :32000] - want[..., :32000]).abs().max() <= 1e-6


def test_load_original_that_cannot_fit_fails_before_reading(monkeypatch, ckpt):
    from minillava.original import convert
    monkeypatch.setattr(convert, "memory_available", lambda device: (10**6, "faked by the test"))
    monkeypatch.setattr(convert, "hub_state", lambda *a: pytest.fail("weights read after a failed check"))
    with pytest.raises(DeviceError, match=r"needs 0\.\d GB on cpu \(all float32\), 0\.0 GB are available "
                                          r"\(faked by the test\); convert it once \(minillava convert-original\)"):
        load_original(ckpt[1], ckpt[2])


@torch.no_grad()
def test_convert_round_trip(ckpt, converted):
    hf, orig, clip, ref = ckpt
    ours = load_model(converted)
    ids, pv = prompt(ours, 1, text_len=40, seed=4)
    want = ref(input_ids=ids, pixel_values=pv).logits[..., :32000]
    assert (ours(ids, pv)[..., :32000] - want).abs().max() <= 1e-6
    # transformers loads the converted folder too, with the same config it wrote for llava-hf
    assert (C.reference(converted)(input_ids=ids, pixel_values=pv).logits[..., :32000] - want).abs().max() <= 1e-6
    a, b = load_file(str(hf / "model.safetensors")), load_file(str(converted / "model.safetensors"))
    assert set(a) == set(b)  # the hub keys exactly, nothing dropped, nothing extra
    for k in a:
        n = 32000 if k.endswith(("embed_tokens.weight", "lm_head.weight")) else None
        assert torch.equal(a[k][:n], b[k][:n]), k
    got, want = LlavaConfig.from_json(converted).to_dict(), LlavaConfig.from_json(hf).to_dict()
    assert got.pop("image_seq_length") == ref.config.vision_config.image_size ** 2 // 14 ** 2 + (
        got["vision_feature_select_strategy"] == "full")  # the tiny hub config leaves llava's 576 there
    assert got == {k: v for k, v in want.items() if k != "image_seq_length"}


@torch.no_grad()
def test_padded_vocabulary_rows_never_win(ckpt, converted):
    model = load_model(converted)
    for w in (model.language_model.lm_head.weight, model.language_model.model.embed_tokens.weight):
        assert torch.allclose(w[32000:], w[:32000].mean(0).expand(64, -1), atol=1e-7)
    h = torch.randn(4000, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    logits = model.language_model.lm_head(h)  # any hidden state: the mean row scores below the best real row
    assert (logits.argmax(-1) < 32000).all()
    assert (logits[:, 32000:].amax(-1) < logits[:, :32000].amax(-1)).all()


def test_sharded_conversion(ckpt, tmp_path):
    hf, orig, clip, _ = ckpt
    out = convert_original(orig, clip, tmp_path / "out", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    ids, pv = prompt(load_model(out), 1, seed=5)
    assert torch.equal(load_model(out)(ids, pv), load_original(orig, clip)(ids, pv))


def test_tokenizer_json_from_elsewhere(ckpt, tmp_path):
    """liuhaotian's repos ship only tokenizer.model: then a tokenizer.json is passed in, or a warning says so."""
    folder = tmp_path / "llava"
    shutil.copytree(ckpt[1], folder)
    (folder / "tokenizer.json").unlink()
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        convert_original(folder, ckpt[2], tmp_path / "a")
    assert not (tmp_path / "a" / "tokenizer.json").exists()
    out = convert_original(folder, ckpt[2], tmp_path / "b", tokenizer=TOKENIZERS["llama2"])
    processor = Processor.from_pretrained(out)
    assert (processor.image_token_id, processor.pad_token_id, processor.padding_side) == (32000, 32001, "left")
    assert json.loads((out / "added_tokens.json").read_text()) == {"<image>": 32000, "<pad>": 32001}


@torch.no_grad()
def test_clip_folder_with_pytorch_model_bin(ckpt, tmp_path):
    """An older CLIP snapshot: pytorch_model.bin (read as safely as the LLaVA shards), position_ids buffers in it."""
    hf, orig, clip, _ = ckpt
    old = tmp_path / "clip"
    shutil.copytree(clip, old)
    state = load_file(str(old / "model.safetensors"))
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    state["text_model.embeddings.position_ids"] = torch.arange(8)[None]
    torch.save(state, old / "pytorch_model.bin")
    (old / "model.safetensors").unlink()
    a, b = load_original(orig, clip), load_original(orig, old)
    ids, pv = prompt(a, 1, seed=6)
    assert torch.equal(a(ids, pv), b(ids, pv))


def test_original_token_ids(converted):
    """The original's tokenizer_image_token (llava/mm_utils.py): "... USER: <image>\\nPlease describe ..." ->
    [..., 3148, 1001, 29901, 29871, <image>, 29871, 13, 12148, ...] with the real Llama-2 tokenizer."""
    processor = Processor.from_pretrained(converted)
    conversation = [{"role": "user",
                     "content": [{"type": "image"}, {"type": "text", "text": "Please describe the image."}]}]
    image = Image.new("RGB", (70, 50), (200, 30, 30))
    inputs = prepare(processor, conversation, [image])
    ids = inputs["input_ids"][0].tolist()
    n = processor.num_image_tokens(56, 56)
    start = ids.index(32000)
    assert ids[start:start + n] == [32000] * n and ids.count(32000) == n
    assert ids[start - 4:start] == [3148, 1001, 29901, 29871] and ids[start + n:start + n + 3] == [29871, 13, 12148]
    assert ids[:3] == [1, 319, 13563] and ids.count(1) == 1  # "<s> A chat": one BOS, the system prompt first
    tok = processor.tokenizer
    system = tok.encode(VICUNA_V1_SYSTEM + " USER: ").ids
    assert ids == system + [32000] * n + tok.encode("\nPlease describe the image. ASSISTANT:").ids[1:]
    assert inputs["attention_mask"].shape == inputs["input_ids"].shape and inputs["attention_mask"].all()
    # a prompt string is used as it is; two images; a prompt that starts with <image>; a bare Tokenizer
    assert tokenize_original(tok, "<image>\nA<image>B", 2, 32000) == [1, 32000, 32000, 29871, 13, 29909,
                                                                        32000, 32000, 350]
    assert tokenize_original(tok, "Hi <image>", 1, 7) == [1, 6324, 29871, 7]  # an empty last chunk adds nothing
    assert tokenize_original(tok, "<image><image>", 1, 7) == [1, 7, 7]
    with pytest.raises(PromptError, match="1 <image> marker"):
        prepare(processor, "USER: <image>\nHi ASSISTANT:", [image, image])


def expand2square(img, background):
    """LLaVA's llava/mm_utils.py expand2square, verbatim."""
    width, height = img.size
    if width == height:
        return img
    elif width > height:
        result = Image.new(img.mode, (width, width), background)
        result.paste(img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(img.mode, (height, height), background)
        result.paste(img, ((height - width) // 2, 0))
        return result


@pytest.mark.parametrize("size", [(90, 41), (33, 80), (60, 60)])
def test_pad_to_square(converted, size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    square = expand2square(image, (122, 116, 104))
    assert square.getpixel((0, 0)) == (122, 116, 104) or size[0] == size[1]
    processor = Processor.from_pretrained(converted)
    assert processor.image_config["pad_to_square"]  # image_aspect_ratio "pad" -> LlavaImageProcessor, do_pad
    plain = Processor.from_pretrained(converted, pad_to_square=False)
    got = prepare(processor, "USER: <image>\nHi ASSISTANT:", image)["pixel_values"]
    assert torch.equal(got, plain.preprocess([square]))
    assert torch.equal(prepare(processor, "<image>", image, pad=False)["pixel_values"], plain.preprocess([image]))
    assert processor.preprocess([image]).shape == got.shape == (1, 3, 56, 56)


class Custom:
    """Harmless, but not a tensor: weights_only refuses any class it does not know."""


def test_transformers_reads_the_converted_processor(converted):
    """transformers' AutoProcessor on the converted folder: LlavaImageProcessor with do_pad, same pixels and ids."""
    from transformers import AutoProcessor
    theirs = AutoProcessor.from_pretrained(converted, backend="pil")
    assert type(theirs.image_processor).__name__ == "LlavaImageProcessorPil" and theirs.image_processor.do_pad
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (41, 90, 3), dtype=np.uint8))
    text = "USER: <image>\nWhat is this? ASSISTANT:"
    ours = prepare(Processor.from_pretrained(converted), text, image)
    want = theirs(text=text, images=image, return_tensors="pt")
    assert torch.equal(ours["pixel_values"], want["pixel_values"])
    assert torch.equal(ours["input_ids"], want["input_ids"])  # this tokenizer.json prepends "▁": no difference here


def bad_bins():
    return {"custom object": {"w": torch.zeros(2), "obj": Custom()}, "string value": {"w": torch.zeros(2), "b": "hi"},
            "a list": [torch.zeros(2)], "int key": {1: torch.zeros(2)}}


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("case", ["custom object", "string value", "a list", "int key"])
def test_bin_with_anything_but_tensors_is_refused(tmp_path, case):
    path = tmp_path / "pytorch_model.bin"
    torch.save(bad_bins()[case], path)
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        read_bin(path)
    assert {"custom object": "GLOBAL tests.test_original.Custom", "string value": "'b' -> str",
            "a list": "found a list", "int key": "1 -> Tensor"}[case] in str(e.value)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_not_executed(ckpt, tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    payload = {"x": Evil(marker), "model.norm.weight": torch.ones(2)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:  # a plain (non-zip) pickle, which torch.load cannot mmap
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused to unpickle.*GLOBAL posix.system"):
        read_bin(path)
    # the same file as a shard of an otherwise good original checkpoint
    folder = tmp_path / "llava"
    shutil.copytree(ckpt[1], folder)
    shutil.copy(path, folder / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin: refused"):
        load_original(folder, ckpt[2])
    assert not marker.exists()


def test_strict_and_config_errors(ckpt, tmp_path):
    hf, orig, clip, _ = ckpt
    with pytest.raises(ConfigError, match="load it with minillava.original"):
        LlavaConfig.from_json(orig)
    folder = tmp_path / "llava"
    shutil.copytree(orig, folder)
    shard = folder / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)  # not mmapped: the file is rewritten below
    torch.save({**state, "model.mm_projector.4.weight": torch.zeros(2)}, shard)
    with pytest.raises(CheckpointError, match=r"'model.mm_projector.4.weight' in .*pytorch_model-00001-of-00002.bin"):
        load_original(folder, clip)
    torch.save({k: v for k, v in state.items() if k != "lm_head.weight"}, shard)
    with pytest.raises(CheckpointError, match="missing.*language_model.lm_head.weight"):
        load_original(folder, clip)
    cfg = json.loads((orig / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, mm_projector_type="linear")))
    with pytest.raises(ConfigError, match="mm_projector_type = 'linear'"):
        load_original(folder, clip)
    (folder / "config.json").write_text(json.dumps(dict(cfg, mm_hidden_size=1024)))
    with pytest.raises(ConfigError, match="mm_hidden_size 1024"):
        load_original(folder, clip)
