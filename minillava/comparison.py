"""Compare two stage dumps (what `minillava logits` writes, or `Llava.stages()` returns) and find where they
start to drift.

    report = minillava.compare("ref.safetensors", "mine.safetensors", atol=1e-4, rtol=1e-4)
    print(report)             # one row per stage, then the first drifting stage and where inside it
    assert report.passed

A stage passes when every element satisfies |other - ref| <= atol + rtol * |ref| (torch.isclose's rule);
integer stages (input_ids, attention_mask) must be equal. Stages are checked in pipeline order, so the
first failing row is where the other implementation goes wrong: every later stage inherits the error.
Logits are compared only where `attention_mask` is 1 (taken from the reference): what a left-pad
position computes is undefined in every implementation.
"""
import math
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import CompareError

# The stages in the order the model computes them; vision_hidden_states.<layer> sort by layer
PIPELINE = ("input_ids", "attention_mask", "pixel_values", "vision_hidden_states", "vision_features",
            "image_features", "inputs_embeds", "logits", "greedy_tokens")
# What the axes of each stage are, for saying where the largest difference is
AXES = {"input_ids": ("row", "position"), "attention_mask": ("row", "position"),
        "pixel_values": ("image", "channel", "y", "x"), "vision_hidden_states": ("image", "token", "channel"),
        "vision_features": ("image", "token", "channel"), "image_features": ("image", "token", "channel"),
        "inputs_embeds": ("row", "position", "channel"), "logits": ("row", "position", "vocab id"),
        "greedy_tokens": ("row", "step")}


@dataclass
class Row:
    """One stage compared: its shape, the differences, and where the largest one is."""
    name: str
    shape: tuple
    max_abs: float
    mean_abs: float
    rel: float  # ||other - ref|| / ||ref|| over the compared elements
    passed: bool
    where: tuple = ()  # index of the largest difference
    ref_value: float = 0.0
    other_value: float = 0.0
    note: str = ""  # e.g. how many logit positions the attention mask left

    def location(self):
        """'row 0, position 17, channel 5' for the largest difference."""
        axes = AXES.get(self.name.split(".")[0], ())
        if len(axes) != len(self.where):
            axes = [f"axis {i}" for i in range(len(self.where))]
        return ", ".join(f"{a} {i}" for a, i in zip(axes, self.where))


@dataclass
class Report:
    rows: list
    atol: float
    rtol: float
    notes: list = field(default_factory=list)

    @property
    def passed(self):
        return all(r.passed for r in self.rows)

    @property
    def first_drift(self):
        """The earliest stage beyond tolerance (a Row), or None when all pass."""
        return next((r for r in self.rows if not r.passed), None)

    @property
    def exit_status(self):  # for the command line: 0 all pass, 1 a stage fails
        return 0 if self.passed else 1

    def __str__(self):
        lines = [f"{'stage':30s} {'shape':22s} {'max abs':>10s} {'mean abs':>10s} {'rel':>10s}  result",
                 *(f"{r.name:30s} {str(list(r.shape)):22s} {r.max_abs:10.3g} {r.mean_abs:10.3g} {r.rel:10.3g}  "
                   f"{'ok' if r.passed else 'FAIL'}{'  ' + r.note if r.note else ''}" for r in self.rows),
                 f"tolerance: |other - ref| <= {self.atol:g} + {self.rtol:g} * |ref|; integer stages exact",
                 *self.notes]
        r = self.first_drift
        if r is None:
            lines.append(f"all {len(self.rows)} stages pass")
        else:
            lines.append(f"first drift: {r.name}, largest difference at {r.location()}: "
                         f"ref {r.ref_value:.6g}, other {r.other_value:.6g}")
        return "\n".join(lines)


def read_dump(path):
    """A stage dump file -> ({name: tensor}, metadata). CompareError when it is not a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"{path}: no such file (expected a stage dump written by `minillava logits`)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CompareError(f"{path}: not a safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           f"; expected a stage dump written by `minillava logits`") from None


def pipeline_order(names):
    """Stage names sorted as the model computes them; names minillava does not know come last."""
    def key(name):
        base, _, layer = name.partition(".")
        if base in PIPELINE:
            return (PIPELINE.index(base), int(layer) if layer.isdigit() else 0, name)
        return (len(PIPELINE), 0, name)
    return sorted(names, key=key)


def compare(ref, other, atol=1e-5, rtol=1e-5, mapping=None, stages=None):
    """Compare two stage dumps: `ref` (ours) and `other`, each a .safetensors path or a {name: tensor} dict.

    mapping: {other's name: our name} for dumps that name their stages differently.
    stages: the stage names to compare (default: every stage of `ref`); each must be in both.
    atol, rtol: finite numbers >= 0 (a negative or NaN tolerance would fail identical dumps).
    Returns a Report; CompareError for unusable input (a stage missing, shapes that differ, not a dump, a
    tolerance that cannot hold).
    """
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise CompareError(f"{name} = {value!r}, expected a finite number >= 0")
    (ref, ref_meta), (other, other_meta) = _as_stages(ref, "ref"), _as_stages(other, "other")
    other = _rename(other, mapping or {})
    names = pipeline_order(stages if stages is not None else ref)
    for where, d in (("ref", ref), ("other", other)):
        missing = [n for n in names if n not in d]
        if missing:
            raise CompareError(f"{where} has no stage {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                               f"(it has {', '.join(pipeline_order(d)[:8]) or 'nothing'}); name them as "
                               f"`minillava logits` does, or give a mapping (--map THEIR_NAME=OUR_NAME)")
    for n in names:
        if tuple(ref[n].shape) != tuple(other[n].shape):
            raise CompareError(f"stage {n}: ref has shape {list(ref[n].shape)}, other {list(other[n].shape)} "
                               f"(the same prompt and image on both sides?)")
    notes = []
    if ref_meta.get("prompt") is not None and other_meta.get("prompt") not in (None, ref_meta["prompt"]):
        notes.append(f"note: the dumps were made from different prompts: {ref_meta['prompt']!r:.60} vs "
                     f"{other_meta['prompt']!r:.60}")
    mask = ref.get("attention_mask")
    return Report([_row(n, ref[n], other[n], atol, rtol, mask) for n in names], atol, rtol, notes)


def _as_stages(x, which):
    if isinstance(x, (str, Path)):
        return read_dump(x)
    if isinstance(x, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in x.items()):
        return {k: v.detach().cpu() for k, v in x.items()}, {}
    raise CompareError(f"{which}: expected a .safetensors path or a dict of stage name -> tensor, got "
                       f"{type(x).__name__}")


def _rename(other, mapping):
    out = {}
    for k, v in other.items():
        name = mapping.get(k, k)
        if name in out:
            raise CompareError(f"other: two stages would be named {name!r} after the mapping (check --map)")
        out[name] = v
    return out


def _row(name, ref, other, atol, rtol, mask):
    exact = not (ref.is_floating_point() or other.is_floating_point())
    a, b = ref.double(), other.double()
    diff = (a - b).abs()
    both_nan = a.isnan() & b.isnan()
    diff = torch.where(both_nan, 0.0, diff.nan_to_num(nan=math.inf))  # NaN on one side only: an infinite difference
    allowed = torch.zeros_like(a) if exact else atol + rtol * a.abs().nan_to_num(nan=0.0)
    keep, note = torch.ones_like(diff, dtype=torch.bool), ""
    if name == "logits" and mask is not None and tuple(mask.shape) == tuple(diff.shape[:2]):
        keep = (mask != 0)[..., None].expand_as(diff)
        note = f"(positions where attention_mask is 1: {int((mask != 0).sum())} of {mask.numel()})"
    d = torch.where(keep, diff, 0.0)
    n = max(int(keep.sum()), 1)
    ref_norm = torch.where(keep & ~both_nan, a, 0.0).norm().item()
    ok = bool(((diff <= allowed) | ~keep).all())
    i = int(d.flatten().argmax()) if d.numel() else 0
    where = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), diff.shape)) if d.numel() else ()
    max_abs = d.max().item() if d.numel() else 0.0
    rel = d.norm().item() / ref_norm if ref_norm else (0.0 if max_abs == 0 else math.inf)
    return Row(name, tuple(ref.shape), max_abs, d.sum().item() / n, rel, ok, where,
               a[where].item() if where else 0.0, b[where].item() if where else 0.0, note)
