"""The 7b-width benchmark: the real llava-1.5-7b-hf config.json with N of its 32 decoder layers.

    python benchmarks/bench.py --size 7b-slice [--layers 4] [--repeats 2]

The full CLIP-L/336 tower, full-width (4096) embeddings and lm_head, N decoder layers; random weights saved as
float16 in the hub layout (one image + a short question = 593 tokens). Each configuration runs in a fresh
process, one after the other (never two large models in memory at once), alternating over the repeats:

    minillava stored        dtype float32, weights kept float16 and widened as used (the CPU default)
    minillava materialized  dtype float32, weights converted at load
    minillava float16       half-precision compute
    transformers default    from_pretrained without a dtype (float16 here, as the file)
    transformers float32    from_pretrained(dtype=torch.float32): the reference

Measured: load time, peak RSS after load and after the prompt + 8 new tokens, time to first token (prefill of
the image prompt + the first token), decode tokens/s (median step), and the largest logits difference against
transformers float32 over the prompt's last position and every decode step (the decode feeds the same fixed
tokens to every configuration, so the logits are comparable). Then each figure is extrapolated to the full 7b
(32 layers) and 13b (40 layers, 5120 wide) with the formula printed.

The speed of the stored mode against the materialized one is measured apart, both models in one process with
their prefills and decode steps interleaved, paired ratios: alone, and beside one busy process (a pure-Python
loop started for the timed part and stopped after it), since a machine with a neighbour is the common case.

    python benchmarks/bench.py --size 7b-slice --paired-only --beside alone   # or busy, or alone,busy
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent
VISION = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
          "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
          "vocab_size": 32000}
TEXT_7B = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
           "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16",
           "vocab_size": 32064}  # Llama defaults: 4096 wide, 11008 MLP, 32 heads, 32 layers
TEXT_13B = dict(TEXT_7B, _name_or_path="lmsys/vicuna-13b-v1.5", hidden_size=5120, intermediate_size=13824,
                num_attention_heads=40, num_key_value_heads=40, num_hidden_layers=40)
CONFIGS = ["minillava stored", "minillava materialized", "minillava float16", "transformers default",
           "transformers float32"]
NEW_TOKENS = 8


def config_7b(text=TEXT_7B, layers=None, vision=VISION):
    """llava-1.5-7b-hf's config.json (13b's with text=TEXT_13B), with `layers` decoder layers."""
    return {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
            "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
            "text_config": dict(text, **({"num_hidden_layers": layers} if layers else {})),
            "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
            "vision_config": vision, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
            "vocab_size": 32064}


def build(folder, layers, text=TEXT_7B, vision=VISION):
    """Random float16 weights in the hub layout (keys = minillava's module tree), scaled like trained ones.
    text, vision: other sizes (the test suite's smoke form)."""
    from minillava import Llava, LlavaConfig
    from minillava.checkpoint import save_weights, write_json
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config_7b(text, layers, vision)
    with torch.device("meta"):
        model = Llava(LlavaConfig.from_dict(cfg))
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, p in model.state_dict().items():
        r = torch.randn(p.shape, generator=g)
        if name.endswith("bias"):
            r = 0.02 * r
        elif p.ndim == 1 and "norm" in name:
            r = 1.0 + 0.1 * r
        elif p.ndim >= 2 and "embed" not in name:
            r = r / p[0].numel() ** 0.5
        state[name] = r.to(torch.float16)
    save_weights(state, folder)
    write_json(folder / "config.json", cfg)
    return folder


def rss_gb(field):
    with open("/proc/self/status") as f:
        return int(f.read().split(field + ":")[1].split()[0]) * 1024 / 1e9


def child(config, folder, out, threads):
    """One configuration in this fresh process; writes its figures and logits to `out`."""
    if threads:
        torch.set_num_threads(threads)
    import transformers

    import minillava  # noqa: F401  both libraries imported first: neither pays for the other's imports
    ids, pv, steps = inputs()
    impl, mode = config.split(" ", 1)
    t = time.perf_counter()
    if impl == "minillava":
        kw = {"stored": {}, "materialized": {"weights": "materialized"}, "float16": {"dtype": "float16"}}[mode]
        model = minillava.load_model(folder, **kw)
    else:
        kw = {} if mode == "default" else {"dtype": torch.float32}
        model = transformers.LlavaForConditionalGeneration.from_pretrained(folder, **kw).eval()
    load_s, rss_load = time.perf_counter() - t, rss_gb("VmHWM")
    logits, times = [], []
    with torch.no_grad():
        t = time.perf_counter()
        if impl == "minillava":
            cache = model.new_cache(1, ids.shape[1] + len(steps))
            logits.append(model(ids, pv.to(model.dtype), cache=cache, start_pos=0, logits_to_keep=1)[0, -1].float())
        else:
            o = model(input_ids=ids, pixel_values=pv.to(model.dtype), use_cache=True, logits_to_keep=1)
            cache = o.past_key_values
            logits.append(o.logits[0, -1].float())
        int(logits[-1].argmax())  # the first token
        ttft = time.perf_counter() - t
        for i, tok in enumerate(steps):  # fixed tokens (not the argmax), so every configuration sees the same sequence
            t = time.perf_counter()
            if impl == "minillava":
                y = model(tok.view(1, 1), cache=cache, start_pos=ids.shape[1] + i)[0, -1]
            else:
                y = model(input_ids=tok.view(1, 1), past_key_values=cache, use_cache=True).logits[0, -1]
            int(y.argmax())
            times.append(time.perf_counter() - t)
            logits.append(y.float())
    torch.save(torch.stack(logits), str(out) + ".pt")
    Path(out).write_text(json.dumps({
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."), "load_s": load_s, "rss_load_gb": rss_load,
        "ttft_s": ttft, "decode_tok_s": 1 / statistics.median(times), "rss_peak_gb": rss_gb("VmHWM")}))


def inputs():
    """One 336-px image + a short question in the llava-1.5 template: 593 tokens; then NEW_TOKENS fixed tokens."""
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 32000, (16,), generator=g)
    ids = torch.cat([torch.tensor([1]), text[:4], torch.full((576,), 32000), text[4:]])[None]  # 1 + 4 + 576 + 12
    return ids, torch.randn(1, 3, 336, 336, generator=g), torch.randint(3, 32000, (NEW_TOKENS,), generator=g)


def child_check(folder, out):
    """The memory check on this checkpoint with 1 GB said to be available: how long until the DeviceError."""
    import minillava
    import minillava.loading as loading
    loading.memory_available = lambda device: (10**9, "faked for the benchmark")
    t = time.perf_counter()
    try:
        minillava.load_model(folder)
        message = None
    except minillava.DeviceError as e:
        message = str(e)
    Path(out).write_text(json.dumps({"check_s": time.perf_counter() - t, "message": message}))


BUSY = """import os
parent = os.getppid()
while os.getppid() == parent:  # the busy loop, ending with the benchmark even if it is killed
    for _ in range(10**6):
        pass
"""


def child_paired(folder, out, threads, rounds, busy):
    """minillava stored and materialized in one process, their prefills and decode steps interleaved: on a shared
    machine whose speed drifts by tens of percent, only runs taken at the same moment compare. busy: one busy
    process (a pure-Python loop) runs beside the timed part, started and stopped here."""
    import minillava
    from minillava import layers
    if threads:
        torch.set_num_threads(threads)
    ids, pv, steps = inputs()
    models = {"stored": minillava.load_model(folder),
              "materialized": minillava.load_model(folder, weights="materialized")}
    order = list(models)
    res = {k: {"ttft_s": [], "step_s": [], "ttft_page_reads": [], "step_page_reads": []} for k in models}
    with torch.no_grad():
        for k in order:  # untimed: page the mapped file in, and let the first call of each shape check its blocks
            cache = models[k].new_cache(1, ids.shape[1] + 1)
            models[k](ids, pv, cache=cache, start_pos=0, logits_to_keep=1)
            models[k](steps[:1].view(1, 1), cache=cache, start_pos=ids.shape[1])
        neighbour = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
        load = [read_loadavg()]
        try:
            caches = {}
            for r in range(rounds):  # the order alternates, so neither mode always runs first
                for k in (order if r % 2 == 0 else order[::-1]):
                    caches[k] = models[k].new_cache(1, ids.shape[1] + len(steps))
                    t, reads = time.perf_counter(), page_reads()
                    int(models[k](ids, pv, cache=caches[k], start_pos=0, logits_to_keep=1)[0, -1].argmax())
                    res[k]["ttft_s"].append(time.perf_counter() - t)
                    res[k]["ttft_page_reads"].append(page_reads() - reads)
                for i, tok in enumerate(steps):
                    for k in (order if (r + i) % 2 == 0 else order[::-1]):
                        t, reads = time.perf_counter(), page_reads()
                        int(models[k](tok.view(1, 1), cache=caches[k], start_pos=ids.shape[1] + i)[0, -1].argmax())
                        res[k]["step_s"].append(time.perf_counter() - t)
                        res[k]["step_page_reads"].append(page_reads() - reads)
            # the anatomy of a decode step on one 11008 x 4096 weight: float32 read whole, or float16 widened
            w16 = models["stored"].language_model.model.layers[0].mlp.gate_proj.weight
            w32, x = w16.float(), torch.randn(1, w16.shape[1])
            f32 = min(timed(lambda: torch.nn.functional.linear(x, w32)) for _ in range(15))
            anatomy = {"f32_gemv_ms": 1e3 * f32, "f32_gemv_gbs": w32.nbytes / f32 / 1e9,
                       "widened_gemv_ms": 1e3 * min(timed(lambda: layers.linear_widened(x, w16)) for _ in range(15))}
            load.append(read_loadavg())
        finally:
            if neighbour:
                neighbour.kill()
                neighbour.wait()
    Path(out).write_text(json.dumps({"runs": res, "anatomy": anatomy, "loadavg": load,
                                     "threads": torch.get_num_threads(), "busy_pid": neighbour and neighbour.pid}))


def page_reads():
    """This process's major page faults so far: pages read back from disk (a mapped file's pages, when the
    machine's memory is short, are dropped and read again)."""
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[9])


def read_loadavg():
    """The load averages over 1, 5 and 15 minutes."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def in_a_child(*args):
    """This script run again in a fresh process with `args`, on this checkout's minillava."""
    subprocess.run([sys.executable, __file__, *map(str, args)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def paired(folder, threads, rounds=4, busy=False):
    """Interleaved stored vs materialized speed (child_paired), printed as paired ratios."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "paired.json"
        in_a_child("--paired", folder, out, threads or 0, rounds, int(busy))
        got = json.loads(out.read_text())
    s, m = got["runs"]["stored"], got["runs"]["materialized"]
    ttft = statistics.median(a / b for a, b in zip(s["ttft_s"], m["ttft_s"]))
    decode = statistics.median(b / a for a, b in zip(s["step_s"], m["step_s"]))  # tok/s ratio = inverse time ratio
    a = got["anatomy"]
    before, after = (" ".join(map(str, load)) for load in got["loadavg"])
    print(f"\n{'beside one busy process' if busy else 'alone'}, interleaved in one process ({got['threads']} threads, "
          f"{rounds} prefills and {len(s['step_s'])} decode steps each; load average {before} before, "
          f"{after} after): stored / materialized TTFT {ttft:.3f} "
          f"(median {statistics.median(s['ttft_s']):.2f} s vs {statistics.median(m['ttft_s']):.2f} s), "
          f"decode tok/s {decode:.3f} (median step "
          f"{statistics.median(s['step_s']):.3f} s vs {statistics.median(m['step_s']):.3f} s); pages read back from "
          f"disk: stored {sum(s['ttft_page_reads'])} in prefills, {sum(s['step_page_reads'])} in decode steps")
    print(f"one 11008 x 4096 weight, one token: float32 {a['f32_gemv_ms']:.1f} ms "
          f"(read at {a['f32_gemv_gbs']:.1f} GB/s), float16 widened {a['widened_gemv_ms']:.1f} ms (best of 15)")
    return {"ttft_vs_materialized": ttft, "decode_vs_materialized": decode, **got}


# --- the parent: build, run each configuration in a fresh process, compare, extrapolate ----------------------

def params(cfg):
    """Parameter counts of a config: total, decoder layers + final norm + lm_head (read per decode token),
    and the prefill's matrix work in multiply-adds for the 593-token prompt (tower once, decoder per token)."""
    from minillava import Llava, LlavaConfig
    with torch.device("meta"):
        m = Llava(LlavaConfig.from_dict(cfg))
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    lm = m.language_model
    per_token = count(lm) - count(lm.model.embed_tokens)
    t, T = m.config.text_config, 593
    tower = count(m.vision_tower.vision_model.encoder.layers[0]) * (len(m.vision_tower.vision_model.encoder.layers) - 1)
    macs = 577 * tower + 576 * count(m.multi_modal_projector) + T * (per_token - count(lm.lm_head)) \
        + count(lm.lm_head) + 2 * t.num_hidden_layers * T * T * t.hidden_size  # attention: QK^T and AV
    return {"total": count(m), "per_token": per_token, "prefill_macs": macs}


BYTES = {"minillava stored": 2, "minillava materialized": 4, "minillava float16": 2, "transformers default": 2,
         "transformers float32": 4}  # bytes per resident weight


def run(folder, config, tmp, threads):
    out = Path(tmp) / (config.replace(" ", "_") + ".json")
    in_a_child("--child", config, folder, out, threads or 0)
    return json.loads(out.read_text()), torch.load(str(out) + ".pt", weights_only=True)


SPEED_TARGETS = {"alone": 0.95, "busy": 0.80}  # decode tok/s, stored / materialized, at least


def speed(folder, threads, conditions, rounds):
    """The interleaved comparison alone and/or beside one busy process, with its targets."""
    pairs = {c: paired(folder, threads, rounds, busy=c == "busy") for c in conditions}
    targets = []
    for c, pair in pairs.items():
        where = "alone" if c == "alone" else "beside one busy process"
        targets += [(f"TTFT <= 1.10 x materialized, {where}", pair["ttft_vs_materialized"] <= 1.10,
                     f"{pair['ttft_vs_materialized']:.3f}"),
                    (f"decode >= {SPEED_TARGETS[c]:.2f} x materialized, {where}",
                     pair["decode_vs_materialized"] >= SPEED_TARGETS[c], f"{pair['decode_vs_materialized']:.3f}")]
    return pairs, targets


def main(layers=4, repeats=2, ckpt=None, out=None, threads=None, conditions=("alone", "busy"), rounds=4,
         paired_only=False):
    import tempfile
    folder = build(ckpt or Path.home() / ".cache" / "minillava-bench" / f"7b-slice-{layers}", layers)
    file_gb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e9
    if paired_only:
        pairs, targets = speed(folder, threads, conditions, rounds)
        for label, ok, figure in targets:
            print(f"  [{'met' if ok else 'NOT met'}] {label}: {figure}")
        Path(out).write_text(json.dumps({"layers": layers, "file_gb": file_gb, "paired": pairs,
                                         "targets": {label: [ok, f] for label, ok, f in targets}}, indent=1))
        return
    res = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # alternating, so drift in the machine's load hits every configuration
            logits = {}
            for c in CONFIGS:
                fig, logits[c] = run(folder, c, tmp, threads)
                res[c].append(fig)
                shown = " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fig.items())
                print(f"repeat {r + 1}/{repeats} {c:24s} {shown}", flush=True)
            for c in CONFIGS:
                res[c][-1]["max_diff"] = float((logits[c] - logits["transformers float32"]).abs().max())
        check_out = Path(tmp) / "check.json"
        in_a_child("--check", folder, check_out)
        check = json.loads(check_out.read_text())
    pairs, speed_targets = speed(folder, threads, conditions, rounds)
    med = {c: {k: statistics.median(f[k] for f in res[c]) for k in res[c][0] if k != "dtype"} for c in CONFIGS}

    def ratio(a, b, k):  # median over the repeats of the ratio of each pair run back to back
        return statistics.median(x[k] / y[k] for x, y in zip(res[a], res[b]))

    print(f"\nllava-1.5-7b config with {layers} of 32 decoder layers, float16 file {file_gb:.2f} GB, "
          f"{repeats} repeat(s), torch {torch.__version__}, {threads or torch.get_num_threads()} thread(s)")
    print(f"{'':24s} {'dtype':>8s} {'load s':>7s} {'RSS load':>9s} {'RSS peak':>9s} {'TTFT s':>7s} {'tok/s':>6s} "
          f"{'max |diff|':>11s}")
    for c in CONFIGS:
        m = med[c]
        print(f"{c:24s} {res[c][0]['dtype']:>8s} {m['load_s']:7.2f} {m['rss_load_gb']:8.2f}G {m['rss_peak_gb']:8.2f}G "
              f"{m['ttft_s']:7.2f} {m['decode_tok_s']:6.2f} {m['max_diff']:11.3g}")
    S, M, D = "minillava stored", "minillava materialized", "transformers default"
    ratios = {**{f"{k}_{c}": pair[k] for c, pair in pairs.items()  # interleaved: the robust speed comparison
                 for k in ("ttft_vs_materialized", "decode_vs_materialized")},
              "ttft_vs_transformers_default": ratio(S, D, "ttft_s"),
              "fresh_process_ttft_vs_materialized": ratio(S, M, "ttft_s"),
              "fresh_process_decode_vs_materialized": ratio(S, M, "decode_tok_s"),
              "rss_peak_vs_materialized": ratio(S, M, "rss_peak_gb")}
    bound = 1.15 * file_gb + 0.5
    targets = [("logits identical to transformers float32", med[S]["max_diff"] == 0.0,
                f"max |diff| {med[S]['max_diff']:.3g}"),
               ("peak RSS <= 1.15 x file + 0.5 GB", med[S]["rss_peak_gb"] <= bound,
                f"{med[S]['rss_peak_gb']:.2f} <= {bound:.2f} GB"),
               *speed_targets,
               ("TTFT <= 0.25 x transformers default", ratios["ttft_vs_transformers_default"] <= 0.25,
                f"{ratios['ttft_vs_transformers_default']:.3f}"),
               ("a load that cannot fit fails within 2 s", check["message"] is not None and check["check_s"] <= 2,
                f"{check['check_s']:.2f} s")]
    print("\npaired ratios (medians of the ratios of runs taken together): "
          + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    for label, ok, figure in targets:
        print(f"  [{'met' if ok else 'NOT met'}] {label}: {figure}")
    print(f"  memory check message: {check['message']}")
    extrapolate(layers, med, file_gb)
    if out:
        Path(out).write_text(json.dumps({"layers": layers, "file_gb": file_gb, "runs": res, "median": med,
                                         "paired": pairs, "ratios": ratios, "check": check,
                                         "targets": {label: [ok, f] for label, ok, f in targets}}, indent=1))


def extrapolate(layers, med, file_gb):
    """Each figure scaled from the slice to the full models by the work it is proportional to."""
    n = params(config_7b(layers=layers))
    full = {"7b (32 layers)": params(config_7b()), "13b (40 layers, 5120 wide)": params(config_7b(TEXT_13B))}
    print(f"\nextrapolation from the {layers}-layer slice (P: parameters, W: parameters read per decode token, "
          f"F: prefill multiply-adds, b: bytes per resident weight):")
    print("  RSS(full) = RSS(slice) + (P(full) - P(slice)) x b;  TTFT(full) = TTFT(slice) x F(full) / F(slice);\n"
          "  tok/s(full) = tok/s(slice) x W(slice) / W(full);  load(full) = load(slice) x P(full) / P(slice)")
    print(f"  slice: P {n['total'] / 1e9:.3f} B, W {n['per_token'] / 1e9:.3f} B, F {n['prefill_macs'] / 1e12:.3f} T; "
          + "; ".join(f"{k}: P {v['total'] / 1e9:.3f} B, W {v['per_token'] / 1e9:.3f} B, "
                      f"F {v['prefill_macs'] / 1e12:.3f} T" for k, v in full.items()))
    for name, f in full.items():
        print(f"  {name}: file {f['total'] * 2 / 1e9:.1f} GB")
        for c, m in med.items():
            rss = m["rss_peak_gb"] + (f["total"] - n["total"]) * BYTES[c] / 1e9
            print(f"    {c:24s} RSS {rss:6.1f} GB  load {m['load_s'] * f['total'] / n['total']:6.1f} s  "
                  f"TTFT {m['ttft_s'] * f['prefill_macs'] / n['prefill_macs']:7.1f} s  "
                  f"decode {m['decode_tok_s'] * n['per_token'] / f['per_token']:5.2f} tok/s")


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "--check":
        child_check(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--paired":
        child_paired(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), bool(int(sys.argv[6])))
