"""One training step, minillava against transformers, on the same checkpoint and the same batch, float32:
forward, the loss, backward and an AdamW step, with LLaVA-1.5's stage-2 split (projector and decoder trained,
vision tower frozen). minillava steps as `minillava train` does, with the logits of the scored positions only
(training.scored_positions); --every-logit computes them at every position, as transformers does.

    python benchmarks/train_step.py                         # the small checkpoint of bench.py: CLIP-L/336 + 16 layers
    python benchmarks/train_step.py --device cuda
    python benchmarks/train_step.py --size tiny --rounds 1 --steps 1 --out /tmp/t.json   # seconds: the smoke test

The batch: two records, each one 336-px image (576 image tokens) and text around it, right-padded to one length
with the answers labelled, as minillava.training.batch lays a batch out; random ids and pixels, seeded.
Each round runs one fresh process per implementation, the order alternating from round to round. A process loads
the checkpoint, takes one warm-up step (AdamW allocates its states, kernels are chosen), then --steps timed steps,
and reports the median step time and the peak memory of the steps: the resident set's high-water mark (reset after
loading: /proc/self/clear_refs) on a CPU, torch.cuda.max_memory_allocated on a GPU. Both processes report their
first loss, which must agree. The ratio of each round's pair, then the median of the ratios.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import build_checkpoint, peak_rss_mb, timed  # noqa: E402

IMAGE_TOKEN, PAD = 32000, 32001  # bench.py's checkpoints: llava-hf's ids
TEXT = [(40, 60), (20, 30)]  # per record: prompt tokens around its image, answer tokens (labelled)


def make_batch(num_patches, image_size, seed=0):
    """input_ids, attention_mask, pixel_values, labels: two records, right-padded, -100 but on the answers."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prompt, answer in TEXT:
        text = torch.randint(3, IMAGE_TOKEN, (prompt + answer,), generator=g).tolist()
        ids = [1] + text[:5] + [IMAGE_TOKEN] * num_patches + text[5:]
        rows.append((ids, [-100] * (len(ids) - answer) + ids[-answer:]))
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), PAD)
    labels = torch.full((len(rows), T), -100)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)], labels[i, :len(ids)], attention_mask[i, :len(ids)] = (
            torch.tensor(ids), torch.tensor(lab), 1)
    pixel_values = torch.randn(len(rows), 3, image_size, image_size, generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values, "labels": labels}


def load(impl, folder, device):
    """The model with stage 2's trainable parameters, and those parameters."""
    if impl == "minillava":
        from minillava import load_model, training
        model = load_model(folder, device=device, dtype="float32", weights="materialized")
        return model, training.trainable(model, stage=2)
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).to(device)
    model.requires_grad_(False)
    for part in (model.model.multi_modal_projector, model.model.language_model, model.lm_head):
        part.requires_grad_(True)
    return model, [p for p in model.parameters() if p.requires_grad]


def step_fn(impl, model, params, inputs, every_logit=False):
    """One step: forward, loss, backward, AdamW. Returns the loss."""
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    if impl == "minillava":
        from minillava import training
        keep = 0 if every_logit else training.scored_positions(inputs["labels"])  # 0: every position

        def forward():
            logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], logits_to_keep=keep)
            return training.loss(logits, inputs["labels"], logits_to_keep=keep)
    else:
        def forward():
            return model(**inputs).loss

    def step():
        loss = forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def reset_peak(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current resident set


def peak_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def child(impl, folder, device, steps, every_logit):
    """In a fresh process: load, a warm-up step, `steps` timed steps; prints one JSON line."""
    import transformers  # noqa: F401  both libraries imported first, so that neither pays the other's imports

    import minillava  # noqa: F401
    model, params = load(impl, folder, device)
    cfg = model.config.vision_config
    inputs = {k: v.to(device) for k, v in make_batch(int((cfg.image_size // cfg.patch_size) ** 2),
                                                     cfg.image_size).items()}
    step = step_fn(impl, model, params, inputs, every_logit)
    reset_peak(device)
    first_loss = step()  # warm-up: AdamW's states, kernel choices
    times = [timed(step, device) for _ in range(steps)]
    print(json.dumps({"step_s": statistics.median(times), "peak_mb": peak_mb(device), "first_loss": first_loss,
                      "trained_params": sum(p.numel() for p in params)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of processes, the order alternating")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process, after one warm-up step")
    ap.add_argument("--every-logit", action="store_true",
                    help="minillava computes the logits at every position (the exact path), not only the scored")
    ap.add_argument("--ckpt", default=None, help="checkpoint folder (built if missing, as bench.py builds it)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results-train-step.json"))
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "FOLDER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.device, a.steps, a.every_logit)
    folder = build_checkpoint(a.size, a.ckpt or Path.home() / ".cache" / "minillava-bench" / f"{a.size}-all")
    impls = ["minillava", "transformers"]
    runs = {i: {"step_s": [], "peak_mb": []} for i in impls}
    losses, trained = [], {}
    for r in range(a.rounds):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            out = subprocess.run([sys.executable, __file__, "--device", a.device, "--steps", str(a.steps),
                                  *(["--every-logit"] if a.every_logit else []), "--child", impl, str(folder)],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{impl} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            for k in runs[impl]:
                runs[impl][k].append(result[k])
            losses.append((impl, result["first_loss"]))
            trained[impl] = result["trained_params"]
            print(f"round {r + 1} {impl:12s} step {result['step_s']:.3f} s  peak {result['peak_mb']:.0f} MB  "
                  f"first loss {result['first_loss']:.6f}", flush=True)
    first = [loss for _, loss in losses]
    if max(first) - min(first) > 1e-4 * max(1.0, abs(first[0])) or trained["minillava"] != trained["transformers"]:
        sys.exit(f"the two do not take the same step: first losses {losses}, trained parameters {trained}")
    vision = json.loads((Path(folder) / "config.json").read_text())["vision_config"]
    batch = make_batch((vision["image_size"] // vision["patch_size"]) ** 2, vision["image_size"])
    summary = {
        "size": a.size, "device": a.device, "dtype": "float32", "stage": 2,
        "minillava_logits": "every position" if a.every_logit else "scored positions",
        "trained_params": trained["minillava"],
        "batch": {"records": len(TEXT), "tokens": list(batch["input_ids"].shape),
                  "labelled": int((batch["labels"] != -100).sum())},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name()}" if a.device.startswith("cuda") else ""),
        "steps_per_process": a.steps, "first_loss": first[0],
        "median": {i: {k: statistics.median(v) for k, v in runs[i].items()} for i in impls},
        "pair_ratios": {k: [m / t for m, t in zip(runs["minillava"][k], runs["transformers"][k])]
                        for k in runs["minillava"]},
        "runs": runs}
    summary["ratio"] = {k: statistics.median(v) for k, v in summary["pair_ratios"].items()}
    Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    m, t, ratio = summary["median"]["minillava"], summary["median"]["transformers"], summary["ratio"]
    print(f"\n{a.size} checkpoint, float32, stage 2 ({trained['minillava']:,} trained parameters), batch "
          f"{summary['batch']['tokens']} on {a.device}; {summary['machine']}")
    print(f"{'':28s} {'minillava':>10s} {'transformers':>13s} {'ratio':>7s}  (medians; ratio: median of the pairs)")
    for label, k in [("step time (s)", "step_s"), ("peak memory of a step (MB)", "peak_mb")]:
        print(f"{label:28s} {m[k]:10.3f} {t[k]:13.3f} {ratio[k]:7.3f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
