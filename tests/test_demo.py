"""The embedded demo checkpoint: the official layout (transformers loads it and agrees), and it really answers."""
import json

import pytest
import torch

import minillava
from minillava.demo import shapes
from minillava.demo.train import evaluate, prompt_of

DEMO = minillava.DEMO


@pytest.fixture(scope="module")
def loaded():
    return minillava.load()  # no path: the demo


def test_demo_is_small_and_complete():
    size = sum(f.stat().st_size for f in DEMO.iterdir() if f.is_file())
    assert size <= 20 * 2**20
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                 "generation_config.json", "training_log.json", "example.png"):
        assert (DEMO / name).is_file(), name


@torch.no_grad()
def test_transformers_loads_the_demo_and_agrees(loaded):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model, processor = loaded
    ref = LlavaForConditionalGeneration.from_pretrained(DEMO, dtype=torch.float32).eval()
    ref_processor = AutoProcessor.from_pretrained(DEMO)
    examples = shapes.split("test", 10)
    texts = [ref_processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                          {"type": "text", "text": e["question"]}]}],
                                               add_generation_prompt=True) for e in examples]
    assert texts == [prompt_of(e["question"]) for e in examples]
    images = [e["image"] for e in examples]
    want = ref_processor(text=texts, images=images, padding=True, return_tensors="pt")
    got = processor(text=texts, images=images)
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])
    assert (got["pixel_values"] - want["pixel_values"]).abs().max() <= 1e-6
    logits = model(got["input_ids"], got["pixel_values"], attention_mask=got["attention_mask"])
    ref_logits = ref(**want).logits
    real = got["attention_mask"].bool()
    assert (logits[real] - ref_logits[real]).abs().max() <= 1e-4


def test_demo_answers_held_out_questions(loaded):
    model, processor = loaded
    acc = evaluate(model, processor, shapes.split("test", 50))
    # the first 50 held-out questions (10 per kind) score what the full 500 scored, within sampling noise
    log = json.loads((DEMO / "training_log.json").read_text())
    assert acc["overall"] >= log["test_accuracy"]["overall"] - 0.08, (acc, log["test_accuracy"])
    for kind in ("colour", "shape", "count", "description"):
        assert acc[kind] >= 0.9, (kind, acc)
    # the README quotes the full evaluation of the training log
    readme = (DEMO.parent.parent / "README.md").read_text()
    assert f"{log['test_accuracy']['overall']:.1%}" in readme


def test_dataset_is_deterministic():
    a, b = shapes.split("test", 20), shapes.split("test", 20)
    assert [(x["question"], x["answer"]) for x in a] == [(x["question"], x["answer"]) for x in b]
    assert all((x["image"].tobytes() == y["image"].tobytes()) for x, y in zip(a, b))
    assert [x["kind"] for x in a[:5]] == shapes.KINDS
    # training draws seeds below 10**9 (minillava.demo.train.conversation): the held-out split never overlaps it
    assert shapes.SEED_BASE["test"] >= 10**9


def test_confusable_scenes_share_colours_and_shapes():
    # training-only scenes where a position question needs colour and shape together
    for seed in range(30):
        objects = shapes.sample(seed, "position", confusable=True)["objects"]
        pairs = [(o["color"], o["shape"]) for o in objects]
        assert len(set(pairs)) == len(pairs)  # still no (colour, shape) pair twice
        for i, (color, shape) in enumerate(pairs):  # each shares its colour or its shape with another one
            assert len(pairs) == 1 or any(c == color or s == shape for j, (c, s) in enumerate(pairs) if j != i), pairs
