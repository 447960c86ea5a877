"""Fine-tune a llava-hf checkpoint on LLaVA instruction records: the loop `minillava train` runs, short enough
to read and to call from a notebook. One process, one device, full fine-tuning of what a stage trains.

    model, processor = minillava.load("llava-tiny", weights="materialized")
    records = finetune.read_records("records.json")
    for log in finetune.train(model, processor, records, image_folder="images", stage=2, steps=100,
                              out="llava-tiny-tuned", source="llava-tiny"):
        print(log["step"], log["loss"])

LLaVA-1.5's recipe (haotian-liu/LLaVA, scripts/v1_5/pretrain.sh and finetune.sh, run by transformers' Trainer):
AdamW with weight decay 0 and betas (0.9, 0.999); the learning rate rises linearly over the first 3% of the steps
and then follows a cosine down to 0 (transformers' get_cosine_schedule_with_warmup); gradients clipped to a global
norm of 1.0 (the Trainer's max_grad_norm); 1e-3 in stage 1, 2e-5 in stage 2. The labels, the loss and the
trained parameters are minillava.training's; the model computes only the logits the loss reads
(training.scored_positions), so a step equals transformers' up to the order of float sums, not to the bit.
Records are taken in a fresh seeded random order each epoch; a batch may hold the last records of one epoch and
the first of the next.

Out of scope: LoRA, DeepSpeed/FSDP and several GPUs, 7b-scale runs (TRL or the original repository do those).
"""
import json
import math
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import training
from .checkpoint import save_weights, write_json
from .errors import TrainingError

LR = {1: 1e-3, 2: 2e-5}  # LLaVA-1.5's learning rates (pretrain.sh, finetune.sh)
FORMAT = {1: "plain", 2: "vicuna_v1"}  # the formats of its two stages
# what a llava-hf folder holds besides config.json and the weights: copied as they are
FOLDER_FILES = ("generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json", "processor_config.json",
                "chat_template.json", "chat_template.jinja")
LOG = "train_log.json"  # the settings and every step's loss, beside the weights


def read_records(path):
    """A JSON list of LLaVA records (llava_v1_5_mix665k.json's format), or JSON Lines: one record a line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path}: cannot read the records ({getattr(e, 'strerror', None) or e})") from None
    try:
        if path.suffix != ".jsonl":
            records = json.loads(text)
        else:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    records.append(json.loads(line))
    except json.JSONDecodeError as e:
        where = f"{path}, line {n}" if path.suffix == ".jsonl" else path
        raise TrainingError(f"{where}: not valid JSON ({e}); expected a list of LLaVA records, or one record "
                            f"a line in a .jsonl file") from None
    if not isinstance(records, list) or not records:
        raise TrainingError(f"{path}: expected a non-empty list of LLaVA records ({{'id', 'image', "
                            f"'conversations'}}), got {type(records).__name__} {str(records)[:60]!r}")
    return records


def check_records(records, image_folder, format):
    """Every record, before the first step: a bad one or a missing image fails now, not hours in."""
    for i, record in enumerate(records):
        name, _, image = training.check_record(record, i, format)
        if isinstance(image, str):
            path = Path(image_folder or ".") / image
            if not path.is_file():
                raise TrainingError(f"{name}: its image {path} does not exist (images are found under the image "
                                    f"folder, {image_folder or 'the current folder'})")


def learning_rate(step, steps, lr, warmup_ratio=0.03):
    """The rate of step `step` (0-based) of `steps`: a linear warm-up over ceil(warmup_ratio * steps) steps,
    then a half cosine to 0, as transformers' get_cosine_schedule_with_warmup."""
    warmup = math.ceil(warmup_ratio * steps)
    if step < warmup:
        return lr * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, processor, records, *, stage=2, format=None, steps=None, lr=None, batch_size=16,
          image_folder=None, max_length=None, warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0, seed=0,
          out=None, source=None, save_every=None):
    """Train `model` in place on `records`, one step each time the returned iterator is advanced; it yields a
    dict after each step: step (1-based), steps, loss, lr, grad_norm (before clipping), seconds (of the step),
    batch (the indices of its records), saved (True where the folder was written). The settings, the records
    and their images and the folder to write are checked here, before the first step.

    stage: 1 trains the projector, 2 the projector and the decoder (training.trainable). format: "plain",
    "vicuna_v1" or "template" (default: the stage's own, plain or vicuna_v1). steps: default one pass over the
    records. lr: default LLaVA-1.5's for the stage. out: the folder to write, with `source`'s tokenizer and
    processor files (see `save`), every `save_every` steps and after the last; None writes nothing."""
    if not isinstance(records, (list, tuple)) or not records:
        raise TrainingError(f"records must be a non-empty list of LLaVA records, got {str(records)[:60]!r}")
    for name, value, ok, expected in [
            ("stage", stage, stage in (1, 2), "1 (the projector) or 2 (the projector and the decoder)"),
            ("format", format, format is None or format in training.FORMATS, f"one of {training.FORMATS}"),
            ("steps", steps, steps is None or steps >= 1, "an integer >= 1 (None: one pass over the records)"),
            ("batch_size", batch_size, batch_size >= 1, "an integer >= 1"),
            ("lr", lr, lr is None or 0 < lr < math.inf, "a finite number > 0"),
            ("warmup_ratio", warmup_ratio, 0 <= warmup_ratio <= 1, "a number from 0 to 1"),
            ("weight_decay", weight_decay, 0 <= weight_decay < math.inf, "a finite number >= 0"),
            ("max_grad_norm", max_grad_norm, max_grad_norm > 0, "a number > 0 (inf: no clipping)"),
            ("save_every", save_every, save_every is None or save_every >= 1, "an integer >= 1 (None: at the end)")]:
        if not ok:
            raise TrainingError(f"{name} = {value!r}, expected {expected}")
    format = format or FORMAT[stage]
    lr = LR[stage] if lr is None else lr
    steps = math.ceil(len(records) / batch_size) if steps is None else steps
    params = training.trainable(model, stage)  # weights held narrower than the model computes fail here
    check_records(records, image_folder, format)
    if out is not None:
        prepare_folder(out, source)
    settings = dict(stage=stage, format=format, steps=steps, lr=lr, batch_size=batch_size, warmup_ratio=warmup_ratio,
                    weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, records=len(records))
    return _steps(model, processor, records, params, settings, image_folder, max_length, out, source, save_every)


def _steps(model, processor, records, params, settings, image_folder, max_length, out, source, save_every):
    """The loop of `train`, with its checked settings."""
    steps, batch_size = settings["steps"], settings["batch_size"]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    optimizer.zero_grad(set_to_none=True)  # no gradient left over from an earlier backward pass
    rng = random.Random(settings["seed"])
    torch.manual_seed(settings["seed"])
    order = []
    history = []
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            start = time.perf_counter()
            while len(order) < batch_size:  # a new epoch in a new order
                order += rng.sample(range(len(records)), len(records))
            chosen, order = order[:batch_size], order[batch_size:]
            inputs = training.batch(processor, [records[i] for i in chosen], image_folder, settings["format"],
                                    max_length, numbers=chosen)
            rate = learning_rate(step, steps, settings["lr"], settings["warmup_ratio"])
            for group in optimizer.param_groups:
                group["lr"] = rate
            keep = training.scored_positions(inputs["labels"])  # logits only where the loss reads them
            logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], logits_to_keep=keep)
            loss = training.loss(logits, inputs["labels"], logits_to_keep=keep)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            log = dict(step=step + 1, steps=steps, loss=loss.item(), lr=rate, grad_norm=grad_norm.item(),
                       seconds=time.perf_counter() - start, batch=chosen, saved=False)
            history.append({k: log[k] for k in ("step", "loss", "lr", "grad_norm")})
            if out is not None and (step + 1 == steps or save_every and (step + 1) % save_every == 0):
                save(model, source, out, {**settings, "history": history})
                log["saved"] = True
            yield log
    finally:
        model.train(was_training)


def prepare_folder(out, source):
    """Checked before the first step: `source` has the files to copy, `out` is a new folder (or empty)."""
    out, source = Path(out), Path(source) if source is not None else None
    if source is None or not (source / "config.json").is_file():
        raise TrainingError(f"source {source}: to write {out} the checkpoint folder the model was loaded from is "
                            f"needed (its config.json, tokenizer and processor files are copied)")
    if out.resolve() == source.resolve():
        raise TrainingError(f"out {out} is the folder the model was loaded from; write the fine-tuned checkpoint "
                            f"to a new folder")
    if out.is_file() or out.is_dir() and any(out.iterdir()):
        raise TrainingError(f"out {out}: " + ("a file" if out.is_file() else "not empty") + "; give a new folder "
                            "(the fine-tuned checkpoint is written there)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"out {out}: cannot create it ({e.strerror or e})") from None


def save(model, source, out, log=None):
    """A llava-hf folder that minillava and transformers load: config.json (source's, with the dtype the weights
    are written in, the model's), the weights (model.safetensors; shards and an index above 5 GB, as
    transformers' save_pretrained), `source`'s tokenizer, processor and chat template files, and `log` as
    train_log.json. A Ctrl-C while it writes is held until the folder is complete."""
    source, out = Path(source), Path(out)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    dtype = str(model.dtype).removeprefix("torch.")
    for part in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        for key in ("torch_dtype", "dtype"):  # transformers 4 writes the first, 5 the second
            if key in part:
                part[key] = dtype
    if "dtype" not in config:
        config["torch_dtype"] = dtype
    state = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight")  # the embedding matrix again: save_pretrained leaves it out
    with _interrupt_held():
        save_weights(state, out)
        write_json(out / "config.json", config)
        for name in FOLDER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
        if log is not None:
            write_json(out / LOG, log)


def saved_step(out):
    """The step the folder `out` holds (from its train_log.json), or None when nothing was saved there."""
    try:
        return json.loads((Path(out) / LOG).read_text(encoding="utf-8"))["history"][-1]["step"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


@contextmanager
def _interrupt_held():
    """Ctrl-C (SIGINT) waits until the block is done, then raises KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can handle signals
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
