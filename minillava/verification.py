"""`minillava verify FOLDER`: is a downloaded checkpoint complete and consistent, does it answer, and does
minillava agree with transformers on it?

    report = minillava.verify("llava-1.5-7b-hf")   # CheckpointError / ConfigError / TokenizerError if broken
    print(report)
    assert report.passed

1. Files: every shard the index names is present, and each safetensors file is exactly as long as its
   header says (a truncated download is named before anything is loaded); the index and the shards
   agree on which tensor is where.
2. config.json against the tensors: every parameter the config implies is stored with that shape and a
   float dtype, and nothing else is (a config from another model names the first tensor that differs).
3. The tokenizer and processor files against config.json: the `<image>` id, the vocabulary size, the
   patch size, the selection strategy, the crop size, the number of image tokens per image.
4. A built-in picture and question, answered greedily, the answer printed.
5. With transformers importable (it is optional, imported only here): the same prompt through
   `AutoProcessor` + `LlavaForConditionalGeneration` on the same device and dtype, and a table of the
   differences in token ids, pixel values, logits and greedy tokens (minillava.compare's rules).
"""
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import INDEX, check_layer_counts, plan_weights, stored_tensors, weight_files
from .comparison import compare
from .config import LlavaConfig
from .errors import CheckpointError, ConfigError, TokenizerError
from .llava import Llava
from .loading import DEMO, load, resolve_device, resolve_dtype
from .processor import Processor

PICTURE = DEMO / "example.png"
QUESTION = "What is in the image?"
# Tolerances for the comparison with transformers, by the dtype both run in: the inputs (ids, pixels) must
# agree exactly; logits by (atol, rtol). fp32 on CPU gives 0.0 on every test checkpoint; half precision
# kernels differ in their rounding between the two implementations' op orders.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float16: (5e-2, 1e-2), torch.bfloat16: (0.2, 2e-2)}


@dataclass
class Verified:
    folder: Path
    checks: list = field(default_factory=list)  # what was checked, one line each (all passed: a failure raises)
    answer: str = ""
    comparisons: list = field(default_factory=list)  # minillava.compare Reports, when transformers was there
    notes: list = field(default_factory=list)
    reference_error: str = ""  # why transformers could not be compared, when it failed on the folder

    @property
    def passed(self):
        return not self.reference_error and all(r.passed for r in self.comparisons)

    @property
    def exit_status(self):
        return 0 if self.passed else 1

    def __str__(self):
        lines = [f"ok  {c}" for c in self.checks] + [f"answer: {self.answer}"] + self.notes
        lines += [str(r) for r in self.comparisons]
        lines.append(f"{self.folder}: " + ("verified" if self.passed else "minillava and transformers DISAGREE"))
        return "\n".join(lines)


def verify(folder, device=None, dtype=None, reference=True, question=QUESTION, picture=PICTURE, max_new_tokens=12,
           weights="stored"):
    """Check a llava-hf checkpoint folder (see the module docstring); a report, or the MinillavaError that
    names the first problem. device None: CUDA when available, else CPU; dtype None: the checkpoint's
    on a GPU, float32 on CPU. reference=False skips the comparison with transformers."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    device = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = Verified(folder)
    config = LlavaConfig.from_json(folder)
    t, v = config.text_config, config.vision_config
    report.checks.append(f"config.json: {t.model_type} decoder of {t.num_hidden_layers} layers, CLIP tower of "
                         f"{v.num_hidden_layers} layers, {v.image_size} px, saved as {config.dtype}")
    files = check_files(folder)
    report.checks.append(f"{len(files)} weight file(s), {sum(f.stat().st_size for f in files) / 1e6:.1f} MB, "
                         f"each as long as its header says")
    n = check_tensors(config, folder)
    report.checks.append(f"{n} tensors, each with the shape config.json implies")
    processor = Processor.from_pretrained(folder, config=config)
    per_image = check_processor(config, processor, folder)
    report.checks.append(f"tokenizer and processor files: <image> = {processor.image_token_id}, "
                         f"{per_image} image tokens per image, as config.json")

    dtype = resolve_dtype(dtype, device, config.dtype)
    model, processor = load(folder, device=device, dtype=dtype, weights=weights)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                     {"type": "text", "text": question}]}],
                                         add_generation_prompt=True)
    from .images import load_image
    image = load_image(picture)
    # transformers resizes with torchvision when it is installed, with PIL otherwise: the same backend here
    backend = "torch" if reference and all(map(importlib.util.find_spec, ("transformers", "torchvision"))) else "pil"
    inputs = processor(text=text, images=image, backend=backend)
    ours = {**inputs, "logits": model(**inputs).float().cpu()}
    from .generation import generate
    ours["greedy_tokens"] = generate(model, **inputs, max_new_tokens=max_new_tokens).cpu()
    report.answer = processor.decode(ours["greedy_tokens"][0], skip_special_tokens=True).strip()
    del model
    if not reference:
        return report
    try:
        import transformers  # noqa: F401 (optional: only this comparison needs it)
    except ImportError:
        report.notes.append("transformers is not installed: the comparison with it was skipped")
        return report
    try:
        theirs = reference_outputs(folder, text, image, device, dtype, max_new_tokens, processor.pad_token_id)
    except Exception as e:  # transformers refuses a folder minillava accepts: a disagreement too
        report.reference_error = f"transformers {transformers.__version__} could not run it: {type(e).__name__}: " + \
                                 (str(e).splitlines() or [""])[0][:300]
        report.notes.append(report.reference_error)
        return report
    n_new = max(ours["greedy_tokens"].shape[1], theirs["greedy_tokens"].shape[1])
    for d in (ours, theirs):  # a side that stopped at EOS earlier is padded with -1 (a difference, as it should be)
        d["greedy_tokens"] = torch.nn.functional.pad(d["greedy_tokens"], (0, n_new - d["greedy_tokens"].shape[1]),
                                                     value=-1)
    stage = ("input_ids", "attention_mask", "pixel_values")
    report.comparisons.append(compare({k: ours[k] for k in stage}, {k: theirs[k] for k in stage}, 1e-6, 0.0))
    if not report.comparisons[0].passed:  # other inputs: the logits cannot be compared
        return report
    atol, rtol = TOLERANCES[dtype]
    report.comparisons.append(compare({k: ours[k] for k in ("attention_mask", "logits", "greedy_tokens")},
                                      {k: theirs[k] for k in ("attention_mask", "logits", "greedy_tokens")},
                                      atol, rtol))
    report.notes.append(f"compared with transformers {transformers.__version__} on {device}, {dtype}, resized "
                        f"with {'torchvision' if backend == 'torch' else 'PIL'}: prompt {text!r}")
    return report


def reference_outputs(folder, text, image, device, dtype, max_new_tokens, pad_token_id):
    """ids, pixels, logits and greedy tokens from transformers' LlavaProcessor + LlavaForConditionalGeneration."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    on_device = {k: v.to(device) for k, v in inputs.items()}
    on_device["pixel_values"] = on_device["pixel_values"].to(dtype)
    with torch.no_grad():
        logits = model(**on_device).logits.float().cpu()
        out = model.generate(**on_device, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    return {**{k: v.cpu() for k, v in inputs.items()}, "logits": logits,
            "greedy_tokens": out[:, inputs["input_ids"].shape[1]:].cpu()}


# --- the checks -------------------------------------------------------------------------------------------

def check_files(folder):
    """Every weight file present and exactly as long as its header says; the index agrees with the shards."""
    files = weight_files(folder)  # names a shard the index lists but the folder lacks
    index = None
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
    for path in files:
        header = read_header(path)
        if index is not None:
            listed = {k for k, shard in index.items() if shard == path.name}
            stored = set(header) - {"__metadata__"}
            if listed != stored:
                extra, lost = sorted(stored - listed), sorted(listed - stored)
                raise CheckpointError(f"{path}: the index {INDEX} " + (
                    f"lists {lost[0]!r} in this file, which does not hold it" if lost else
                    f"does not list {extra[0]!r}, which this file holds") + " (files from two downloads?)")
    return files


def read_header(path):
    """The JSON header of a safetensors file, after checking the file is as long as the header says."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(f"{path}: {size} bytes, too short for its safetensors header (truncated download? "
                                  f"fetch this file again)")
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {e})") from None
    if size != 8 + n + end:
        why = "truncated download? fetch this file again" if size < 8 + n + end else "extra bytes"
        raise CheckpointError(f"{path}: {size} bytes, but its header describes {8 + n + end} ({why})")
    return header


def check_tensors(config, folder):
    """Names, shapes and dtypes of the stored tensors against the model config.json describes (nothing read):
    the plan the loader makes (checkpoint.plan_weights). Returns the number of tensors the model reads."""
    tensors = stored_tensors(folder)
    check_layer_counts(config, tensors, folder)
    with torch.device("meta"):
        return len(plan_weights(Llava(config), tensors, folder))


def check_processor(config, processor, folder):
    """What Processor.from_pretrained does not check already: the picture size and the image token count.
    Returns the number of image tokens per image."""
    v = config.vision_config
    c = processor.image_config
    size = c["crop_size"] if c["do_center_crop"] else c["size"]
    if (size.get("height"), size.get("width")) != (v.image_size, v.image_size):
        raise ConfigError(f"{folder / 'preprocessor_config.json'}: images are cropped to {size}, the vision tower "
                          f"takes {v.image_size}x{v.image_size} (vision_config.image_size)")
    per_image = v.num_patches + (config.vision_feature_select_strategy == "full")
    ours = processor.num_image_tokens(v.image_size, v.image_size)
    if ours != per_image:
        raise TokenizerError(f"{folder / 'processor_config.json'}: {ours} <image> tokens per image, the model "
                             f"makes {per_image} image features")
    return per_image
