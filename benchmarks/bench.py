"""minillava against transformers on identical weights, inputs and dtype, measured side by side.

    python benchmarks/bench.py --size small            # CPU, fp32: CLIP-L/336 tower + a 271M decoder
    python benchmarks/bench.py --size 7b --device cuda  # the llava-1.5-7b shape, bf16, random weights
    python benchmarks/bench.py --size 7b --layers 8 --device cuda  # its first 8 decoder layers: minutes, not tens
    python benchmarks/bench.py --size tiny --repeats 1 # seconds: the smoke form the test suite runs
    python benchmarks/bench.py --size 7b-slice --layers 4  # the real 7b config, 4 layers: modes and memory (slice7b.py)
    python benchmarks/bench.py --size 7b-slice --paired-only --beside busy  # stored vs materialized speed only,
                                                                            # beside one busy process it starts

Runs alternate (minillava, transformers, minillava, ...) so drift in machine load hits both.
Measured: load time and peak resident memory during load (each load in a fresh process), time to
first token for one 336-px image + ~40 text tokens, decode tokens/s at batch 1 and 4, and the
bandwidth ceiling for decode: bytes of weights read per token / measured copy bandwidth.
Prints a table, writes JSON and draws one plot (if matplotlib is installed).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

VISION_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14, model_type="clip_vision_model")
SIZES = {
    "tiny": dict(vision=dict(VISION_L336, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2), dtype="float32"),
    "small": dict(vision=VISION_L336, text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                                                num_attention_heads=16), dtype="float32"),
    "7b": dict(vision=VISION_L336, text=dict(), dtype="bfloat16"),  # all Llama defaults: the llava-1.5-7b-hf shape
}


def config_dict(size, layers=None):
    s = SIZES[size]
    text = dict(s["text"], **({"num_hidden_layers": layers} if layers else {}))
    return {"model_type": "llava", "image_token_index": 32000, "pad_token_id": 32001, "vision_config": s["vision"],
            "text_config": dict(text, model_type="llama", vocab_size=32064, max_position_embeddings=4096,
                                rms_norm_eps=1e-5), "torch_dtype": s["dtype"]}


def build_checkpoint(size, folder, layers=None):
    """Random weights saved by transformers itself (its save_pretrained layout), built once and reused."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    d = config_dict(size, layers)
    torch.manual_seed(0)
    cfg = LlavaConfig(**{k: v for k, v in d.items() if k != "model_type"})
    model = LlavaForConditionalGeneration(cfg).to(getattr(torch, d["torch_dtype"]))
    model.save_pretrained(folder)
    return folder


def rss_mb():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def peak_rss_mb():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) / 1024


def load(impl, folder, device, dtype):
    if impl == "minillava":
        from minillava import load_model
        return load_model(folder, device=device, dtype=dtype)
    from transformers import LlavaForConditionalGeneration
    return LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()


def child_load(impl, folder, device, dtype):
    """In a fresh process: load time, the resident memory it adds, and what one forward adds on top
    (minillava maps the files, so pages come in lazily when the weights are first used)."""
    import transformers  # noqa: F401  import both libraries first, so neither pays the other's imports

    import minillava  # noqa: F401
    base = rss_mb()
    t = time.perf_counter()
    model = load(impl, folder, device, getattr(torch, dtype))
    load_s = time.perf_counter() - t
    peak_load = peak_rss_mb() - base
    with torch.no_grad():  # a short text prompt (the vision tower stays unread, as in a text-only forward)
        ids = torch.ones(1, 8, dtype=torch.long, device=device)
        model(ids) if impl == "minillava" else model(input_ids=ids)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t  # mmap defers reading the weights to their first use: count it here
    print(json.dumps({"load_s": load_s, "load_peak_mb": peak_load, "load_and_forward_s": first_s,
                      "after_forward_peak_mb": peak_rss_mb() - base}))


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def runner(impl, model, device):
    """gen(ids, pv, n) -> run greedy generation of n new tokens without early stopping."""
    if impl == "minillava":
        from minillava.generation import generate
        return lambda ids, pv, n: generate(model, ids, pv, max_new_tokens=n, eos_token_id=[])
    model.generation_config.eos_token_id = None
    return lambda ids, pv, n: model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                             pad_token_id=32001, **({"pixel_values": pv} if pv is not None else {}))


def copy_bandwidth_gbs(device, mb=512):
    """STREAM-style copy: bytes read + bytes written per second, best of 5."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(5))
    return 2 * src.numel() * 4 / best / 1e9


def decode_bytes_per_token(folder, dtype):
    """Weights read for one decode step: the decoder and lm_head, not the embedding table (one row
    is read), nor the vision tower and projector (they run once per image)."""
    from minillava import Llava, LlavaConfig
    cfg = LlavaConfig.from_json(folder)
    with torch.device("meta"):
        m = Llava(cfg)
    lm = m.language_model
    n = sum(p.numel() for p in lm.parameters()) - lm.model.embed_tokens.weight.numel()
    return n * torch.finfo(getattr(torch, dtype)).bits // 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=list(SIZES) + ["7b-slice"])
    ap.add_argument("--layers", type=int, default=None,
                    help="decoder layers kept (7b-slice: default 4 of the 32; other sizes: default all)")
    ap.add_argument("--threads", type=int, default=None, help="7b-slice: torch threads in each run (default torch's)")
    ap.add_argument("--beside", default="alone,busy",
                    help="7b-slice: conditions of the interleaved stored/materialized comparison, comma-separated: "
                         "alone (nothing started beside it), "
                         "busy (beside one busy process the benchmark starts and stops)")
    ap.add_argument("--rounds", type=int, default=4, help="7b-slice: prefills per mode in each interleaved comparison "
                                                         "(each followed by 8 decode steps)")
    ap.add_argument("--paired-only", action="store_true", help="7b-slice: only the interleaved comparison")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (7b-slice: 2)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--ckpt", default=None, help="checkpoint folder (built if missing)")
    ap.add_argument("--out", default=None, help="JSON output (default: results-small.json etc. beside this script)")
    ap.add_argument("--plot", default=None, help="PNG output (default next to the JSON)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "FOLDER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.size == "7b-slice":  # its own protocol: one fresh process per configuration (benchmarks/slice7b.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from slice7b import main as slice_main
        beside = a.beside.split(",")
        if not set(beside) <= {"alone", "busy"}:
            ap.error(f"--beside takes alone, busy or both (comma-separated), not {a.beside!r}")
        name = "results-7b-slice" + ("-" + "-".join(beside) if a.paired_only else "") + ".json"
        return slice_main(a.layers or 4, a.repeats or 2, a.ckpt, a.out or Path(__file__).parent / name, a.threads,
                          beside, a.rounds, a.paired_only)
    a.repeats = a.repeats or 5
    dtype = a.dtype or SIZES[a.size]["dtype"]
    if a.child:
        return child_load(a.child[0], a.child[1], a.device, dtype)
    torch.manual_seed(0)
    cached = Path.home() / ".cache" / "minillava-bench" / f"{a.size}-{a.layers or 'all'}"
    folder = build_checkpoint(a.size, a.ckpt or cached, a.layers)
    size_mb = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 2**20
    impls = ["minillava", "transformers"]
    res = {i: {k: [] for k in ("load_s", "load_peak_mb", "load_and_forward_s", "after_forward_peak_mb", "ttft_s",
                               "decode_tok_s_b1", "decode_tok_s_b4")} for i in impls}

    # 1. loading, each in a fresh process, alternating
    for _ in range(a.repeats):
        for impl in impls:
            out = subprocess.run([sys.executable, __file__, "--size", a.size, "--device", a.device, "--dtype", dtype,
                                  "--child", impl, str(folder)], capture_output=True, text=True, check=True)
            for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                res[impl][k].append(v)

    # 2. time to first token and decode speed, both models in this process, alternating
    models = {i: load(i, folder, a.device, getattr(torch, dtype)) for i in impls}
    gens = {i: runner(i, models[i], a.device) for i in impls}
    g = torch.Generator().manual_seed(0)
    img = int(models["minillava"].config.vision_config.num_patches)
    text = torch.randint(3, 32000, (1, 40), generator=g)
    image_prompt = torch.cat([text[:, :1], text[:, 1:6], torch.full((1, img), 32000), text[:, 6:]], 1).to(a.device)
    pv = torch.randn(1, 3, 336, 336, generator=g).to(a.device, getattr(torch, dtype))
    short = torch.randint(3, 32000, (4, 16), generator=g).to(a.device)
    n = a.new_tokens
    with torch.no_grad():
        for impl in impls:  # warm-up: every call timed below, once (the first run of a shape pays for
            gens[impl](image_prompt, pv, 1)  # allocations, kernel selection and lazy initialisation)
            for b in (1, 4):
                gens[impl](short[:b], None, 1)
                gens[impl](short[:b], None, n + 1)
        for _ in range(a.repeats):
            for impl in impls:
                gen = gens[impl]
                res[impl]["ttft_s"].append(timed(lambda: gen(image_prompt, pv, 1), a.device))
                for b in (1, 4):
                    t1 = timed(lambda: gen(short[:b], None, 1), a.device)
                    tn = timed(lambda: gen(short[:b], None, n + 1), a.device)
                    res[impl][f"decode_tok_s_b{b}"].append(n / (tn - t1))  # per sequence

    bw = copy_bandwidth_gbs(a.device)
    bytes_tok = decode_bytes_per_token(folder, dtype)
    summary = {"size": a.size, "layers": a.layers, "dtype": dtype, "device": a.device, "checkpoint_mb": size_mb,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}, threads {torch.get_num_threads()}"
                          + (f", {torch.cuda.get_device_name()}" if a.device.startswith("cuda") else ""),
               "copy_bandwidth_gbs": bw, "decode_bytes_per_token": bytes_tok,
               "decode_ceiling_tok_s": bw * 1e9 / bytes_tok,
               "median": {i: {k: statistics.median(v) for k, v in res[i].items()} for i in impls}, "runs": res}
    # the ratio of each side-by-side pair of runs, then the median: the machine's speed drifts between
    # repeats (by tens of percent on a shared 2-core VM), and a pair run back to back shares the drift
    summary["ratio"] = {k: statistics.median(a / b for a, b in zip(res["minillava"][k], res["transformers"][k]))
                        for k in res["minillava"]}
    m, h, r = summary["median"]["minillava"], summary["median"]["transformers"], summary["ratio"]
    rows = [("load time (s)", "load_s", "lower"), ("peak RSS added by load (MB)", "load_peak_mb", "lower"),
            ("load + first text forward (s)", "load_and_forward_s", "lower"),
            ("... RSS after it (MB)", "after_forward_peak_mb", "lower"), ("time to first token (s)", "ttft_s", "lower"),
            ("decode tok/s, batch 1", "decode_tok_s_b1", "higher"),
            ("decode tok/s, batch 4 (per seq)", "decode_tok_s_b4", "higher")]
    print(f"\n{a.size} checkpoint, {dtype}, {size_mb:.0f} MB on disk; {summary['machine']}")
    print(f"{'':34s} {'minillava':>10s} {'transformers':>13s} {'ratio':>7s}  (medians; ratio: median of paired runs)")
    for label, k, _ in rows:
        print(f"{label:34s} {m[k]:10.3f} {h[k]:13.3f} {r[k]:7.2f}")
    print(f"copy bandwidth {bw:.1f} GB/s; {bytes_tok / 1e9:.3f} GB read per decode step -> ceiling "
          f"{summary['decode_ceiling_tok_s']:.1f} tok/s; "
          f"minillava at {m['decode_tok_s_b1'] / summary['decode_ceiling_tok_s']:.0%} "
          f"({m['decode_tok_s_b1'] * bytes_tok / 1e9:.1f} GB/s of weights), transformers at "
          f"{h['decode_tok_s_b1'] / summary['decode_ceiling_tok_s']:.0%}")
    out = Path(a.out or Path(__file__).parent / f"results-{a.size}.json")
    out.write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3.2))
    shown = [row for row in rows if row[1] != "after_forward_peak_mb"]
    labels = [label for label, _, _ in shown]
    speedup = [1 / r[k] if better == "lower" else r[k] for _, k, better in shown]
    ax.barh(labels, speedup, color=["tab:green" if s >= 1 else "tab:red" for s in speedup])
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xlabel("minillava advantage over transformers (x, higher is better)")
    ax.set_title(f"{a.size} checkpoint, {dtype}, {a.device}")
    fig.tight_layout()
    fig.savefig(a.plot or out.with_suffix(".png"), dpi=90)


if __name__ == "__main__":
    main()
