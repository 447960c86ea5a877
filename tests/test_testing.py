"""minillava.testing: every variant is written without transformers in under 2 s, and transformers and
minillava load it and give identical ids, pixels and logits (difference 0.0 in fp32)."""
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

import minillava
from minillava import testing
from minillava.original import convert_original, load_original
from tests.helpers import HANG_S

CONVERSATION = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What colour is the square on the left?"}]}]


def timed(write, *args, **kwargs):
    start = time.perf_counter()
    out = write(*args, **kwargs)
    return out, time.perf_counter() - start


def both(folder, image_seed=1):
    """(minillava's logits and inputs, transformers' logits and inputs) for one image question."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    ref, info = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # every stored tensor used, every parameter loaded
    ref_processor = AutoProcessor.from_pretrained(folder, backend="pil")  # minillava's default resize (PIL)
    model, processor = minillava.load(folder)
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert text == ref_processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    image = testing.image(image_seed)
    ours, theirs = processor(text=text, images=image), ref_processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        return (model(**ours), ours), (ref.eval()(**theirs).logits, theirs)


@pytest.mark.parametrize("variant", list(testing.VARIANTS))
def test_variant_loads_in_transformers_and_minillava_identically(variant, tmp_path):
    folder, seconds = timed(testing.write_checkpoint, tmp_path / variant, variant, seed=3)
    assert seconds < 2.0, f"{variant}: written in {seconds:.2f} s"
    (got, ours), (want, theirs) = both(folder)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert got.shape == want.shape and (got - want).abs().max().item() == 0.0
    assert want.std() > 0.5  # a model whose every part matters, not a near-constant output
    config = minillava.LlavaConfig.from_json(folder)
    n_image = int((ours["input_ids"] == config.image_token_index).sum())
    if variant == "mistral":  # the window is shorter than the prompt, so it really masks
        assert config.text_config.sliding_window < ours["input_ids"].shape[1]
    if variant == "multilayer":  # two layers concatenated, CLS kept
        assert n_image == 17 and config.feature_layers == [2, 1]
    else:
        assert n_image == 16
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("language_model.lm_head.weight" in keys) == (variant != "tied")
    assert ("multi_modal_projector.linear_1.bias" in keys) == (variant != "no_projector_bias")


def test_sharded_like_a_download(tmp_path):
    folder = testing.write_checkpoint(tmp_path / "gqa", "gqa", max_shard_bytes=100_000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
    assert not (folder / "model.safetensors").exists()
    (got, _), (want, _) = both(folder)
    assert (got - want).abs().max().item() == 0.0


def test_original_layout(tmp_path):
    (llava, clip), seconds = timed(testing.write_original, tmp_path / "original", seed=4)
    assert seconds < 2.0, f"original: written in {seconds:.2f} s"
    assert len(list(llava.glob("pytorch_model-*.bin"))) >= 2 and (clip / "model.safetensors").is_file()
    ours = load_original(llava, clip)
    converted = convert_original(llava, clip, tmp_path / "llava-hf")
    (_, inputs), (want, _) = both(converted)
    with torch.no_grad():
        got = ours(**inputs)
    assert (got - want).abs().max().item() == 0.0
    assert inputs["input_ids"].max() <= testing.PAD_TOKEN_ID  # the demo vocabulary + <image> + <pad>


def test_seeded(tmp_path):
    a = testing.write_checkpoint(tmp_path / "a", "gqa", seed=1)
    b = testing.write_checkpoint(tmp_path / "b", "gqa", seed=1)
    c = testing.write_checkpoint(tmp_path / "c", "gqa", seed=2)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="variant 'llama3'"):
        testing.write_checkpoint(tmp_path / "d", "llama3")


def test_transformers_is_never_imported_by_the_package():
    code = ("import sys, minillava, minillava.testing, minillava.comparison, minillava.verification, minillava.cli\n"
            "assert 'transformers' not in sys.modules, 'imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-2000:]
