"""minillava.compare and `minillava compare`: planted faults, one per stage, each found where it was planted.

A fault is planted by replacing one stage and recomputing every later stage from it with the model, as a
buggy engine would: the earlier stages stay equal, the later ones all drift. compare must name the
planted stage (not an earlier one, not a later one) and the element where it was planted.
"""
import re

import pytest
import torch
from safetensors.torch import save_file

import minillava
from minillava import CompareError, testing
from minillava.cli import main


@pytest.fixture(scope="module")
def model_and_inputs(tmp_path_factory):
    """A tiny random checkpoint and a left-padded batch of two prompts with one image each."""
    folder = testing.write_checkpoint(tmp_path_factory.mktemp("cmp") / "mha", "mha", seed=5)
    model, processor = minillava.load(folder)
    texts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\nWhere is the red square, and why? ASSISTANT:"]
    inputs = processor(text=texts, images=[testing.image(1), testing.image(2)])
    assert not inputs["attention_mask"].all()  # the first row is left-padded
    return model, inputs


@pytest.fixture(scope="module")
def ref(model_and_inputs):
    model, inputs = model_and_inputs
    return model.stages(**inputs)


@torch.no_grad()
def rerun(model, stages, name, value):
    """`stages` with stage `name` replaced by `value` and every later stage recomputed from it."""
    s = dict(stages, **{name: value})
    if name in ("input_ids", "attention_mask", "pixel_values"):
        return model.stages(s["input_ids"], s["pixel_values"], s["attention_mask"])
    if name.startswith("vision_hidden_states."):  # one selected layer, "default" strategy: drop the CLS token
        s["vision_features"] = value[:, 1:]
        name = "vision_features"
    if name == "vision_features":
        s["image_features"] = model.multi_modal_projector(s["vision_features"])
        name = "image_features"
    if name == "image_features":
        s["inputs_embeds"] = model.embed(s["input_ids"], image_features=s["image_features"])
        name = "inputs_embeds"
    if name == "inputs_embeds":
        s["logits"] = model(inputs_embeds=s["inputs_embeds"], attention_mask=s["attention_mask"])
    return s


def plant(stages, name):
    """(the faulty value of stage `name`, the index planted)."""
    x = stages[name].clone()
    if name == "input_ids":
        where = (1, x.shape[1] - 3)  # a text token of the second (unpadded) row
        x[where] = (int(x[where]) + 7) % 400
    elif name == "attention_mask":
        where = (1, 2)
        x[where] = 0
    elif name == "pixel_values":
        where = (1, 2, 30, 17)
        x[where] += 0.5
    elif name == "logits":
        where = (1, 20, 33)
        x[where] += 0.5
    else:  # (images or rows, tokens, channels): one token, one channel
        where = (1, 5, 3)
        x[where] += 0.5
    return x, where


def test_stages_in_pipeline_order(ref):
    names = list(ref)
    assert minillava.compare.__module__ == "minillava.comparison"
    assert names == ["input_ids", "attention_mask", "pixel_values", "vision_hidden_states.2", "vision_features",
                     "image_features", "inputs_embeds", "logits"]
    from minillava.comparison import pipeline_order
    assert pipeline_order(reversed(names + ["vision_hidden_states.10", "other"])) == (
        names[:3] + ["vision_hidden_states.2", "vision_hidden_states.10"] + names[4:] + ["other"])


def test_identical_dumps_pass(ref):
    report = minillava.compare(ref, {k: v.clone() for k, v in ref.items()}, atol=0, rtol=0)
    assert report.passed and report.first_drift is None and report.exit_status == 0
    assert [r.max_abs for r in report.rows] == [0.0] * len(ref)
    assert "all 8 stages pass" in str(report)


STAGES = ["input_ids", "attention_mask", "pixel_values", "vision_hidden_states.2", "vision_features",
          "image_features", "inputs_embeds", "logits"]


@pytest.mark.parametrize("stage", STAGES)
def test_planted_fault_is_named(model_and_inputs, ref, stage, tmp_path):
    model, _ = model_and_inputs
    value, where = plant(ref, stage)
    other = rerun(model, ref, stage, value)
    report = minillava.compare(ref, other, atol=1e-5, rtol=1e-5)
    rows = {r.name: r for r in report.rows}
    i = STAGES.index(stage)
    assert all(rows[s].passed for s in STAGES[:i]), str(report)  # everything before the fault agrees
    assert not rows[stage].passed and report.first_drift.name == stage, str(report)
    assert not rows["logits"].passed, str(report)  # and it reaches the logits
    assert report.first_drift.where == where, str(report)
    # the same from the command line, on files
    save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp_path / "ref.safetensors"))
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    out = Buffer()
    assert main(["compare", str(tmp_path / "ref.safetensors"), str(tmp_path / "other.safetensors")], stdout=out) == 1
    assert f"first drift: {stage}, largest difference at " in out.text


def test_drift_location_is_spoken_in_the_stage_axes(model_and_inputs, ref):
    model, _ = model_and_inputs
    value, _ = plant(ref, "image_features")
    report = minillava.compare(ref, rerun(model, ref, "image_features", value))
    assert "first drift: image_features, largest difference at image 1, token 5, channel 3: ref" in str(report)
    value, _ = plant(ref, "pixel_values")
    assert report.first_drift.location() == "image 1, token 5, channel 3"
    report = minillava.compare(ref, rerun(model, ref, "pixel_values", value))
    assert report.first_drift.location() == "image 1, channel 2, y 30, x 17"


def test_logits_compared_only_where_the_mask_is_one(ref):
    other = dict(ref, logits=ref["logits"].clone())
    pad = (ref["attention_mask"][0] == 0).nonzero()[0, 0]
    other["logits"][0, pad] += 100.0  # a left-pad position: undefined in every implementation
    report = minillava.compare(ref, other)
    assert report.passed, str(report)
    n_real = int(ref["attention_mask"].sum())
    assert f"positions where attention_mask is 1: {n_real} of {ref['attention_mask'].numel()}" in str(report)
    other["logits"][0, -1, 0] += 1e-3  # a real position
    assert minillava.compare(ref, other).first_drift.name == "logits"


def test_tolerances_nan_and_mapping(ref):
    other = {k: v.clone() for k, v in ref.items()}
    other["logits"] += 1e-3
    assert not minillava.compare(ref, other, atol=1e-4, rtol=0).passed
    assert minillava.compare(ref, other, atol=2e-3, rtol=0).passed
    other["logits"][1, -1, 0] = float("nan")
    report = minillava.compare(ref, other, atol=1, rtol=1)
    assert report.first_drift.name == "logits" and report.first_drift.where == (1, ref["logits"].shape[1] - 1, 0)
    theirs = {("lm." + k if k == "logits" else k): v for k, v in ref.items()}
    assert minillava.compare(ref, theirs, mapping={"lm.logits": "logits"}).passed
    assert minillava.compare(ref, {"logits": ref["logits"], "input_ids": ref["input_ids"]},
                             stages=["logits"]).passed


def test_unusable_input_exits_2_with_one_line(ref, tmp_path, capsys):
    good = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(good))
    missing = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items() if k != "image_features"}, str(missing))
    shape = tmp_path / "shape.safetensors"
    save_file({k: (v[:1] if k == "pixel_values" else v).contiguous() for k, v in ref.items()}, str(shape))
    text = tmp_path / "notes.safetensors"
    text.write_text("not a dump\n")
    cases = [([str(good), str(missing)], "image_features"), ([str(good), str(shape)], "pixel_values"),
             ([str(good), str(text)], "not a safetensors file"), ([str(good), str(tmp_path / "nope")], "no such file"),
             ([str(good), str(good), "--map", "logits"], "OTHER_NAME=OUR_NAME"),
             ([str(good), str(good), "--stage", "vision_hidden_states.7"], "vision_hidden_states.7")]
    for args, named in cases:
        assert main(["compare", *args], stdout=Buffer()) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("minillava") and " error: " in err and named in err, (args, err)
        assert "Traceback" not in err
    with pytest.raises(CompareError, match="shape"):
        minillava.compare(good, shape)
    assert main(["compare", str(good), str(good)], stdout=Buffer()) == 0


@pytest.mark.parametrize("name", ["atol", "rtol"])
@pytest.mark.parametrize("value", [-1, -1e-9, float("nan"), float("inf"), True, "1e-4", None])
def test_a_tolerance_that_cannot_hold_is_refused(ref, name, value):
    """A negative or NaN tolerance would report identical dumps as drifting; an infinite one passes anything."""
    with pytest.raises(CompareError, match=re.escape(f"{name} = {value!r}, expected a finite number >= 0")):
        minillava.compare(ref, ref, **{name: value})


def test_a_tolerance_that_cannot_hold_from_the_command_line(ref, tmp_path, capsys):
    dump = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(dump))
    for flag, value in [("--atol", "-1"), ("--rtol", "nan"), ("--atol", "inf")]:
        assert main(["compare", str(dump), str(dump), flag, value], stdout=Buffer()) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"argument {flag}: {value} is not a finite number >= 0" in err, err
    assert main(["compare", str(dump), str(dump), "--atol", "0", "--rtol", "0"], stdout=Buffer()) == 0


class Buffer:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass
