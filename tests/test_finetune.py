"""minillava.finetune: the training loop `minillava train` runs. Its steps equal the same steps taken with
transformers (LlavaForConditionalGeneration, torch's AdamW, transformers' cosine schedule with warm-up, gradient
clipping as its Trainer clips); its learning rates are transformers' schedule; the folder it writes loads in
minillava and in transformers with the trained weights; a stopped run keeps its last saved step."""
import json
import math

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

import minillava
from minillava import TrainingError, finetune, testing, training
from tests.helpers.checkpoints import hub_key
from tests.test_training_loss import RECORDS


@pytest.mark.parametrize("steps, ratio", [(1, 0.03), (7, 0.03), (100, 0.03), (40, 0.1), (10, 0.0), (5, 1.0)])
def test_learning_rate_is_transformers_cosine_schedule_with_warmup(steps, ratio):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-5)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(ratio * steps), steps)  # Trainer's warm-up count
    for step in range(steps):
        assert finetune.learning_rate(step, steps, 2e-5, ratio) == pytest.approx(schedule.get_last_lr()[0], abs=1e-20)
        optimizer.step()
        schedule.step()


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_steps_equal_transformers_steps(tmp_path, record_images, variant):
    """Three steps of finetune.train against three steps written with transformers, on the same batches: AdamW
    (weight decay 0), the cosine schedule with warm-up, gradients clipped to norm 1.0. Every trained weight ends
    within 1e-4 of how far it moved (the gradients differ in their last bits: finetune asks for the scored
    positions' logits only; AdamW's first steps turn a last-bit difference in a near-zero gradient into a visible
    one), and the frozen tower is untouched."""
    tolerance = 1e-4
    folder = testing.write_checkpoint(tmp_path / variant, variant, seed=3)
    model, processor = minillava.load(folder, weights="materialized")
    records = RECORDS * 2  # batches of 4 out of 6 records: two epochs, mixed with and without images
    logs = list(finetune.train(model, processor, records, stage=2, steps=3, lr=1e-3, batch_size=4, warmup_ratio=0.5,
                               image_folder=record_images))

    reference = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    for name, p in reference.named_parameters():
        p.requires_grad_(not hub_key(name).startswith("vision_tower."))
    params = [p for p in reference.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 2, 3)  # ceil(0.5 * 3) warm-up steps
    for log in logs:
        inputs = training.batch(processor, [records[i] for i in log["batch"]], record_images, "vicuna_v1")
        loss = reference(**inputs).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        assert log["loss"] == pytest.approx(loss.item(), abs=1e-6)
        assert log["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    assert [log["lr"] for log in logs] == [0.0, 5e-4, 1e-3]  # two warm-up steps from 0, then the cosine's start

    mine = dict(model.named_parameters())
    original = minillava.load_model(folder, weights="materialized").state_dict()
    for name, p in reference.named_parameters():
        key = hub_key(name)
        if key.startswith("vision_tower."):
            assert torch.equal(mine[key], original[key]), key
            continue
        moved = (p.detach() - original[key]).abs().max()
        assert moved > 0, key  # every trained weight moved
        assert (mine[key].detach() - p.detach()).abs().max() <= tolerance * moved, key


@pytest.fixture
def trained(tmp_path, record_images):
    """A tiny checkpoint fine-tuned for 4 steps into tmp_path/out, saved at steps 2 and 4."""
    source = testing.write_checkpoint(tmp_path / "source", "gqa", seed=1)
    model, processor = minillava.load(source, weights="materialized")
    logs = list(finetune.train(model, processor, RECORDS, stage=2, steps=4, batch_size=2, lr=1e-3,
                               image_folder=record_images, out=tmp_path / "out", source=source, save_every=2))
    return model, processor, tmp_path / "out", logs


def test_saved_folder_loads_in_minillava_and_transformers(trained, record_images):
    model, processor, out, logs = trained
    assert [log["saved"] for log in logs] == [False, True, False, True]
    inputs = training.batch(processor, RECORDS, record_images)
    with torch.no_grad():
        want = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
        again, again_processor = minillava.load(out)
        assert torch.equal(again(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]), want)
        theirs = LlavaForConditionalGeneration.from_pretrained(out)
        got = theirs(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                     attention_mask=inputs["attention_mask"]).logits
    assert (got - want).abs().max() <= 1e-5
    # transformers' processor reads the copied tokenizer, image and chat template files as minillava does
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = AutoProcessor.from_pretrained(out).apply_chat_template(conversation, add_generation_prompt=True)
    assert text == again_processor.apply_chat_template(conversation, add_generation_prompt=True)
    log = json.loads((out / finetune.LOG).read_text())
    assert [h["step"] for h in log["history"]] == [1, 2, 3, 4] and log["stage"] == 2 and log["format"] == "vicuna_v1"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"


def test_a_stopped_run_keeps_its_last_saved_step(tmp_path, record_images):
    source = testing.write_checkpoint(tmp_path / "source", "mha", seed=1)
    model, processor = minillava.load(source, weights="materialized")
    run = finetune.train(model, processor, RECORDS, steps=10, batch_size=2, lr=1e-3, image_folder=record_images,
                         out=tmp_path / "out", source=source, save_every=2)
    for log in run:
        if log["step"] == 3:
            saved = {k: v.clone() for k, v in minillava.load_model(tmp_path / "out").state_dict().items()}
            break  # as Ctrl-C would stop it, between the saves of steps 2 and 4
    run.close()
    assert not model.training  # back in eval mode
    assert json.loads((tmp_path / "out" / finetune.LOG).read_text())["history"][-1]["step"] == 2
    kept = minillava.load_model(tmp_path / "out").state_dict()
    assert all(torch.equal(kept[k], saved[k]) for k in kept)


def test_tied_embeddings_are_saved_once(tmp_path, record_images):
    source = testing.write_checkpoint(tmp_path / "source", "tied", seed=1)
    model, processor = minillava.load(source, weights="materialized")
    list(finetune.train(model, processor, RECORDS, steps=2, batch_size=3, lr=1e-3, image_folder=record_images,
                        out=tmp_path / "out", source=source))
    from safetensors import safe_open
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert "language_model.lm_head.weight" not in f.keys()
    again = minillava.load_model(tmp_path / "out")
    assert torch.equal(again.language_model.lm_head.weight, model.language_model.model.embed_tokens.weight)


def test_half_precision_checkpoint_is_saved_in_float32(tmp_path, record_images):
    source = testing.write_checkpoint(tmp_path / "source", "gqa", dtype=torch.float16)
    model, processor = minillava.load(source, weights="materialized")
    list(finetune.train(model, processor, RECORDS, stage=1, steps=1, batch_size=3, image_folder=record_images,
                        format="vicuna_v1", out=tmp_path / "out", source=source))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"
    from safetensors import safe_open
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = testing.write_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", "mha")
    return folder, *minillava.load(folder, weights="materialized")


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps = 0, expected an integer >= 1"),
    (dict(batch_size=0), "batch_size = 0, expected an integer >= 1"),
    (dict(lr=float("nan")), "lr = nan, expected a finite number > 0"),
    (dict(lr=-1e-5), "lr = -1e-05, expected a finite number > 0"),
    (dict(warmup_ratio=2), "warmup_ratio = 2, expected a number from 0 to 1"),
    (dict(save_every=0), "save_every = 0"),
    (dict(format="llava"), "format = 'llava', expected one of"),
    (dict(stage=3), r"stage = 3, expected 1 \(the projector\)"),
    (dict(stage=1), r"record #0 \(id 'two-turns'\): the plain format \(stage 1\) takes an image and one"),
])
def test_bad_settings_fail_before_the_first_step(tiny, record_images, kwargs, message):
    _, model, processor = tiny
    with pytest.raises(TrainingError, match=message):
        finetune.train(model, processor, RECORDS, image_folder=record_images, **kwargs)


def test_a_missing_image_fails_before_the_first_step(tiny, tmp_path):
    _, model, processor = tiny
    with pytest.raises(TrainingError, match=r"record #0 \(id 'two-turns'\): its image .*wide.png does not exist"):
        finetune.train(model, processor, RECORDS, image_folder=tmp_path)


def test_the_folder_to_write_is_checked_before_the_first_step(tiny, tmp_path, record_images):
    folder, model, processor = tiny
    run = dict(image_folder=record_images, steps=1)
    with pytest.raises(TrainingError, match="is the folder the model was loaded from"):
        finetune.train(model, processor, RECORDS, out=folder, source=folder, **run)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="full: not empty; give a new folder"):
        finetune.train(model, processor, RECORDS, out=tmp_path / "full", source=folder, **run)
    with pytest.raises(TrainingError, match="the checkpoint folder the model was loaded from is needed"):
        finetune.train(model, processor, RECORDS, out=tmp_path / "new", **run)


def test_read_records(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(RECORDS))
    assert finetune.read_records(tmp_path / "r.json") == RECORDS
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "\n")
    assert finetune.read_records(tmp_path / "r.jsonl") == RECORDS
    for name, text, message in [("bad.json", "[{", "bad.json: not valid JSON"),
                                ("bad.jsonl", '{"id": 1}\n\n{"id": 2', r"bad.jsonl, line 3: not valid JSON"),
                                ("dict.json", '{"id": 1}', "dict.json: expected a non-empty list"),
                                ("empty.json", "[]", "empty.json: expected a non-empty list")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(TrainingError, match=message):
            finetune.read_records(tmp_path / name)
    with pytest.raises(TrainingError, match="missing.json: cannot read the records"):
        finetune.read_records(tmp_path / "missing.json")
