"""Folders with the processor files alone, no config.json (what transformers' `processor.save_pretrained()`
writes, or tokenizer files copied without the model), against transformers 5's AutoProcessor.

transformers builds another tokenizer for such a folder than for a complete checkpoint (minillava/tokenizer.py
says which and why); minillava builds the same one in each case: the whole tokenizer (its JSON form) and the
ids of strings with spaces around `<image>` are equal. Then the pattern of transformers' processor tests
(ProcessorTesterMixin): save a processor with `save_pretrained`, load the folder with
`AutoProcessor.from_pretrained`, and compare tokenizer-only, image-only, batched and padded calls.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

import minillava
from minillava import ConfigError, Processor, TokenizerError
from minillava.tokenizer import load_tokenizer
from tests.helpers.tokenizer_files import minimal_config, write_processor_files

# leading, double and trailing spaces around <image>, and the strings of the issue
SPACES = [" <image> red", "  two  spaces", "<image>", " <image>", "<image> ", "  <image>  ", "a <image> b",
          "a  <image>  b", "a<image>b", "trailing  ", "  leading", "<image>\nWhat is this?", " x <image> <image>  y ",
          "USER: <image>\nWhat is shown? ASSISTANT:", "\n<image>\n", " ", ""]
TEXTS = ["What is this?", "  two  spaces ", "USER: Hi ASSISTANT: Hello!</s>USER: and? ASSISTANT:"]
PHOTOS = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
          for i, (h, w) in enumerate([(50, 70), (90, 41), (64, 64)])]


def demo_files(folder, config=False):
    """The demo's processor and tokenizer files (no weights), with or without its config.json."""
    skip = {"model.safetensors", "training_curve.png", "example.png"} | ({"config.json"} if not config else set())
    return shutil.copytree(minillava.DEMO, folder, ignore=lambda d, names: [n for n in names if n in skip
                                                                             or n.endswith(".py")])


def files(root, name, config):
    """A folder of one of the tokenizers, with a llava config.json or without."""
    if name == "demo":
        return demo_files(root / f"demo-{config}", config)
    tokenizer, _, legacy = name.partition("-")
    return write_processor_files(root / f"{name}-{config}", tokenizer=tokenizer, legacy=bool(legacy), config=config)


NAMES = ["llama2", "llama2-legacy", "mistral", "demo"]


def ids_of(tokenizer, texts):
    return [tokenizer.encode(s).ids for s in texts]


@pytest.mark.parametrize("name, config", [(name, None) for name in NAMES] + [("mistral", True), ("demo", True)],
                         ids=lambda x: {None: "processor files only", True: "with config.json"}.get(x, x))
def test_the_tokenizer_transformers_builds(tmp_path, name, config):
    folder = files(tmp_path, name, config)
    theirs = AutoTokenizer.from_pretrained(folder)
    assert type(theirs).__name__ == ("TokenizersBackend" if config else "LlamaTokenizer")
    ours, special, _ = load_tokenizer(folder, model_known=config is not None)
    whole = [json.loads(t.to_str()) for t in (theirs.backend_tokenizer, ours)]
    for d in whole:  # padding and truncation are the processor's business in minillava
        d.pop("padding"), d.pop("truncation")
    assert whole[0] == whole[1]
    want = [theirs(s)["input_ids"] for s in SPACES]
    assert ids_of(ours, SPACES) == want
    for ids in want:
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert special == {k: getattr(theirs, k) for k in special}


def test_the_two_tokenizers_of_the_demo_files(tmp_path):
    """The measurement the docs quote: the same files, with and without config.json."""
    full, alone = demo_files(tmp_path / "full", config=True), demo_files(tmp_path / "alone")
    for folder, want in [(full, [[1, 308, 308, 785, 308, 371], [1, 308, 308, 773, 308, 314, 297, 282, 284, 324]]),
                         (alone, [[1, 308, 785, 371], [1, 308, 773, 308, 314, 297, 282, 284, 324]])]:
        theirs = AutoProcessor.from_pretrained(folder).tokenizer
        assert [theirs(s)["input_ids"] for s in SPACES[:2]] == want
        assert ids_of(Processor.from_pretrained(folder).tokenizer, SPACES[:2]) == want


@pytest.mark.parametrize("name", NAMES)
def test_processor_files_only_match_transformers(tmp_path, name):
    folder = files(tmp_path, name, None)
    theirs, ours = AutoProcessor.from_pretrained(folder, backend="pil"), Processor.from_pretrained(folder)
    with_images = [s for s in SPACES if "<image>" in s]
    images = [Image.fromarray(PHOTOS[i % 3]) for i, s in enumerate(with_images) for _ in range(s.count("<image>"))]
    want = theirs(text=with_images, images=images, padding=True, return_tensors="pt")
    got = ours(with_images, images)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(got[key], want[key]), key
    # what counts the image tokens comes from processor_config.json, as LlavaProcessor takes it
    assert (ours.patch_size, ours.vision_feature_select_strategy, ours.image_token_id) == (
        theirs.patch_size, theirs.vision_feature_select_strategy, theirs.image_token_id)


def saved(tmp_path, name, config):
    """transformers' processor of a folder, saved by transformers with save_pretrained: (folder, processor)."""
    source = AutoProcessor.from_pretrained(files(tmp_path / "source", name, config), backend="pil")
    source.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved", source


@pytest.mark.parametrize("config", [True, None], ids=["from a checkpoint", "from processor files"])
@pytest.mark.parametrize("name", ["llama2", "mistral", "demo"])
def test_saved_by_transformers(tmp_path, name, config):
    """ProcessorTesterMixin's pattern: save_pretrained, AutoProcessor.from_pretrained on the saved folder, then
    tokenizer-only, image-only, batched text with padding, text with images, decode, chat template."""
    folder, _ = saved(tmp_path, name, config)
    assert not (folder / "config.json").exists() and not (folder / "preprocessor_config.json").exists()
    theirs, ours = AutoProcessor.from_pretrained(folder, backend="pil"), Processor.from_pretrained(folder)
    # save_pretrained writes the class it loaded: TokenizersBackend from a checkpoint, else LlamaTokenizer
    assert type(theirs.tokenizer).__name__ == ("TokenizersBackend" if config else "LlamaTokenizer")
    assert ids_of(ours.tokenizer, SPACES + TEXTS) == [theirs.tokenizer(s)["input_ids"] for s in SPACES + TEXTS]
    text_only = theirs(text=TEXTS, padding=True, return_tensors="pt")
    assert {k: v.tolist() for k, v in ours(TEXTS).items()} == {k: v.tolist() for k, v in text_only.items()}
    images = [Image.fromarray(p) for p in PHOTOS]
    assert torch.equal(ours(images=images)["pixel_values"], theirs(images=images, return_tensors="pt")["pixel_values"])
    prompts = ["USER: <image>\nWhat is this? ASSISTANT:", "<image> <image>  two", "no image here"]
    want = theirs(text=prompts, images=images, padding=True, return_tensors="pt")
    got = ours(prompts, images)
    assert all(torch.equal(got[k], want[k]) for k in ("input_ids", "attention_mask", "pixel_values"))
    assert ours.batch_decode(got["input_ids"]) == theirs.batch_decode(want["input_ids"])
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert ours.chat_template == theirs.chat_template
    assert ours.apply_chat_template(conversation, add_generation_prompt=True) == theirs.apply_chat_template(
        conversation, add_generation_prompt=True)


def test_saved_twice(tmp_path):
    """A LlamaTokenizer saves the tokenizer it rebuilt; loading that again rebuilds the same one."""
    folder, source = saved(tmp_path, "mistral", None)
    AutoProcessor.from_pretrained(folder).save_pretrained(tmp_path / "again")
    theirs, ours = AutoProcessor.from_pretrained(tmp_path / "again"), Processor.from_pretrained(tmp_path / "again")
    want = [source.tokenizer(s)["input_ids"] for s in SPACES]
    assert [theirs.tokenizer(s)["input_ids"] for s in SPACES] == ids_of(ours.tokenizer, SPACES) == want


@pytest.mark.parametrize("change", [dict(patch_size=7, image_size=56), dict(strategy="full", image_size=28),
                                    dict(image_token_index=32001, image_size=28)], ids=str)
def test_image_tokens_from_processor_config(tmp_path, change):
    folder = write_processor_files(tmp_path, config=None, **change)
    theirs, ours = AutoProcessor.from_pretrained(folder, backend="pil"), Processor.from_pretrained(folder)
    image = Image.fromarray(PHOTOS[0])
    want = theirs(text="a <image> b", images=image, return_tensors="pt")
    got = ours("a <image> b", image)
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    image_tokens = int((got["input_ids"] == ours.image_token_id).sum())
    assert image_tokens == ours.num_image_tokens(*got["pixel_values"].shape[-2:])


def test_what_is_refused_without_config_json(tmp_path):
    folder = write_processor_files(tmp_path / "gemma", config=None)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok_config, "tokenizer_class": "GemmaTokenizer"}))
    with pytest.raises(TokenizerError, match="tokenizer_class 'GemmaTokenizer' and no config.json"):
        Processor.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(minimal_config()))  # with it, tokenizer.json as it is
    assert Processor.from_pretrained(folder).tokenizer.encode(" <image>").ids[:2] == [1, 259]
    folder = write_processor_files(tmp_path / "no-strategy", config=None)
    proc = json.loads((folder / "processor_config.json").read_text())
    del proc["vision_feature_select_strategy"]
    (folder / "processor_config.json").write_text(json.dumps(proc))
    with pytest.raises(ConfigError, match="vision_feature_select_strategy = None.*no config.json"):
        Processor.from_pretrained(folder)
