"""minillava.training's loss and gradients equal transformers' LlavaForConditionalGeneration(..., labels=...) on every
tiny test checkpoint, fp32, on a right-padded batch mixing records with and without images; `trainable` freezes what
LLaVA-1.5 freezes in each stage, and refuses weights held narrower than the model computes."""
import pytest
import torch
from transformers import LlavaForConditionalGeneration

import minillava
from minillava import TrainingError, testing, training
from tests.helpers.checkpoints import hub_key

RECORDS = [  # different lengths, two images of other shapes, one record without an image: a padded, mixed batch
    {"id": "two-turns", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "green"},
        {"from": "human", "value": "How many shapes are there?"}, {"from": "gpt", "value": "two"}]},
    {"id": "text-only", "conversations": [
        {"from": "human", "value": "Is there a red square?"}, {"from": "gpt", "value": "No."}]},
    {"id": "caption", "image": "tall.png", "conversations": [
        {"from": "human", "value": "Describe the image.\n<image>"},
        {"from": "gpt", "value": "A red circle at the top left."}]},
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """variant -> (minillava model, processor, transformers model) on one tiny checkpoint, built once."""
    cache = {}

    def get(variant):
        if variant not in cache:
            folder = testing.write_checkpoint(tmp_path_factory.mktemp(variant) / "ckpt", variant, seed=3)
            model, processor = minillava.load(folder)
            reference = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
            cache[variant] = model, processor, reference
        return cache[variant]
    return get


# stage 2 on vicuna_v1 (the projector and the whole decoder) on every variant; stage 1, the plain format and the
# template format on the GQA and Mistral ones
CASES = ([(variant, 2, "vicuna_v1") for variant in testing.VARIANTS] +
         [(variant, stage, format) for variant in ("gqa", "mistral")
          for stage, format in [(1, "plain"), (2, "template")]]
         + [("mha", 1, "vicuna_v1")])
# the model asked for the scored positions' logits only (training.scored_positions), as `minillava train` does
KEPT = [(variant, 2, "vicuna_v1") for variant in testing.VARIANTS] + [("gqa", 1, "plain"), ("mistral", 2, "template")]


@pytest.mark.parametrize("variant, stage, format, kept", [c + (False,) for c in CASES] + [c + (True,) for c in KEPT])
def test_loss_and_gradients_equal_transformers(pairs, record_images, variant, stage, format, kept):
    model, processor, reference = pairs(variant)
    records = [r for r in RECORDS if "image" in r] if format == "plain" else RECORDS
    if format == "plain":
        records = [{**r, "conversations": r["conversations"][:2]} for r in records]
    inputs = training.batch(processor, records, image_folder=record_images, format=format)
    assert inputs["attention_mask"].sum(1).unique().numel() == len(records)  # rows of different lengths: padded

    params = training.trainable(model, stage)
    model.zero_grad(set_to_none=True)
    keep = training.scored_positions(inputs["labels"]) if kept else 0
    logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], logits_to_keep=keep)
    if kept:
        assert 0 < logits.shape[1] < inputs["labels"].shape[1] / 2  # a few positions: the answers'
    loss = training.loss(logits, inputs["labels"], logits_to_keep=keep)
    loss.backward()

    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, p in reference.named_parameters():
        p.requires_grad_(hub_key(name) in trained)
    reference.zero_grad(set_to_none=True)
    want = reference(**inputs)  # input_ids, attention_mask, pixel_values, labels
    want.loss.backward()

    assert (loss - want.loss).abs().item() <= 1e-6
    mine = dict(model.named_parameters())
    compared = 0
    for name, p in reference.named_parameters():
        if p.requires_grad:
            scale = p.grad.abs().max()
            assert scale > 0, name  # every trained parameter gets a gradient
            assert (mine[hub_key(name)].grad - p.grad).abs().max() <= 1e-5 * scale, name
            compared += 1
    assert compared == len(params) == len(trained)


def test_num_items_in_batch_divides_the_sum_as_transformers(pairs, record_images):
    model, processor, reference = pairs("gqa")
    inputs = training.batch(processor, RECORDS, image_folder=record_images)
    with torch.no_grad():
        logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
        want = reference(**inputs, num_items_in_batch=torch.tensor(50)).loss
    assert (training.loss(logits, inputs["labels"], num_items_in_batch=torch.tensor(50)) - want).abs().item() <= 1e-6
    labelled = int((inputs["labels"][:, 1:] != -100).sum())
    assert torch.allclose(training.loss(logits, inputs["labels"], labelled), training.loss(logits, inputs["labels"]))


def test_scored_positions_are_those_before_a_labelled_token(pairs, record_images):
    """The kept logits are the full forward's at those positions; a loss given logits of the wrong length says
    what to pass, and labels of the wrong shape are named."""
    model, processor, _ = pairs("gqa")
    inputs = training.batch(processor, RECORDS, image_folder=record_images)
    keep = training.scored_positions(inputs["labels"])
    labelled = (inputs["labels"] != -100).any(0).nonzero().squeeze(1)
    assert keep.tolist() == sorted(set((labelled - 1).tolist()))
    with torch.no_grad():
        every = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
        some = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], logits_to_keep=keep)
        last = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], logits_to_keep=3)
    torch.testing.assert_close(some, every[:, keep], rtol=1e-6, atol=1e-6)
    # an int, as the model takes it: the last 3 positions, scored on the labels after them
    targets = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, -3:]
    want = torch.nn.functional.cross_entropy(every[:, -3:].flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert want.isfinite() and (training.loss(last, inputs["labels"], logits_to_keep=3) - want).abs() <= 1e-6
    with pytest.raises(TrainingError, match="logits_to_keep"):
        training.loss(some, inputs["labels"])
    with pytest.raises(TrainingError, match=r"labels must be a \(batch, length\) tensor.*got \(\d+,\)"):
        training.scored_positions(inputs["labels"][0])


def test_each_stage_trains_what_llava_trains(tmp_path):
    model, _ = minillava.load(testing.write_checkpoint(tmp_path / "gqa", "gqa"))
    names = lambda: {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert len(training.trainable(model, 1)) == len(list(model.multi_modal_projector.parameters()))
    assert names() == {"multi_modal_projector"}
    params = training.trainable(model, 2)
    assert names() == {"multi_modal_projector", "language_model"}
    trained = list(model.multi_modal_projector.parameters()) + list(model.language_model.parameters())
    assert len(params) == len(trained)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    with pytest.raises(TrainingError, match="stage 3"):
        training.trainable(model, 3)


def test_half_precision_weights_kept_as_stored_are_refused(tmp_path, record_images):
    """A float16 checkpoint loaded in float32 keeps its matrices as stored (the CPU default): training refuses them
    and names the way out; loaded with weights="materialized", it trains."""
    folder = testing.write_checkpoint(tmp_path / "f16", "gqa", dtype=torch.float16)
    stored, processor = minillava.load(folder)
    with pytest.raises(TrainingError, match="held as stored.*torch.float16.*weights='materialized'"):
        training.trainable(stored, 1)
    model, _ = minillava.load(folder, weights="materialized")
    params = training.trainable(model, 2)
    inputs = training.batch(processor, RECORDS, image_folder=record_images)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    training.loss(logits, inputs["labels"]).backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))
