"""Eager against compiled decoding (minillava/compiled.py), one process, runs paired and alternated.

    python benchmarks/compiled.py --size demo                       # the embedded demo checkpoint, CPU
    python benchmarks/compiled.py --size small                      # bench.py's small shape, random weights, CPU
    python benchmarks/compiled.py --size 7b --layers 8 --device cuda  # the llava-1.5-7b shape, bf16: the GPU target

Each repeat runs the same greedy generation (one image prompt, --new-tokens tokens, no early stop) eagerly and
compiled, in alternating order so that drift in machine load hits both; decode tokens/s is counted from the
first token to the last (the prompt step, eager in both, is left out). The first compiled run compiles, from an
empty compile cache unless --warm: its time is reported apart, not in the runs. Writes
results-compiled-SIZE[-lN]-DEVICE.json beside this script, with the machine's load average before and after.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minillava  # noqa: E402
from minillava import Llava, LlavaConfig, compiled, testing  # noqa: E402
from minillava.generation import decode_step, generate_tokens, prefill  # noqa: E402

VISION_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14, model_type="clip_vision_model")
TEXT = {"small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16),
        "7b": {}}  # bench.py's --size small and 7b (all Llama defaults: the llava-1.5-7b-hf shape)


def random_model(size, layers, device, dtype):
    """A model of bench.py's shapes with minillava.testing's random weights (every one set, of unit-variance
    outputs), on the device: no checkpoint to write."""
    text = dict(TEXT[size], model_type="llama", vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5)
    if layers:
        text["num_hidden_layers"] = layers
    config = LlavaConfig.from_dict({"model_type": "llava", "image_token_index": 32000, "pad_token_id": 32001,
                                    "vision_config": VISION_L336, "text_config": text})
    with torch.device("meta"):
        model = Llava(config).eval()
    model.load_state_dict({k: v.to(device, dtype) for k, v in testing.random_state(config).items()}, assign=True)
    return model


def image_prompt(model, size):
    """The demo's question about its example image; for a random model, random ids around one image's tokens."""
    if size == "demo":
        processor = minillava.Processor.from_pretrained(minillava.DEMO)
        text = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}], add_generation_prompt=True)
        inputs = processor(text=text, images=[minillava.DEMO / "example.png"])
        return inputs["input_ids"], inputs["pixel_values"].to(model.device)
    g = torch.Generator().manual_seed(0)
    n, s = model.config.vision_config.num_patches, model.config.vision_config.image_size
    ids = torch.cat([torch.tensor([1]), torch.randint(3, 32000, (20,), generator=g), torch.full((n,), 32000),
                     torch.randint(3, 32000, (20,), generator=g)])
    return ids[None], torch.randn(1, 3, s, s, generator=g).to(model.device, model.dtype)


def decode_run(model, ids, pv, new_tokens, compile):
    """(decode tokens/s, the tokens): time from the first token (the prompt's) to the last."""
    tokens = generate_tokens(model, ids, pv, max_new_tokens=new_tokens, eos_token_id=[], compile=compile)
    out = [next(tokens)]
    start = time.perf_counter()
    out += list(tokens)  # each step ends on the CPU (the loop reads whether every row is done)
    return (new_tokens - 1) / (time.perf_counter() - start), torch.stack(out, 1)


@torch.no_grad()
def step_logits_difference(model, ids, pv):
    """(max |compiled - eager| logits of one decode step after the prompt, max |eager logits|)."""
    T, n = ids.shape[1], compiled.cache_length(ids.shape[1] + 1, model.config.text_config.max_position_embeddings)
    mask = torch.zeros(1, n, dtype=torch.long, device=model.device)
    mask[:, :T + 1] = 1
    eager_cache, static_cache = model.new_cache(1, T + 1), model.new_cache(1, n, static=True)
    token = prefill(model, ids, pv, mask, eager_cache).argmax(-1)
    prefill(model, ids, pv, mask, static_cache)
    eager = decode_step(model, token, mask, eager_cache, T)
    got = compiled.decoder(model, decode_step)(model, token, mask, static_cache, T)
    return (got - eager).abs().max().item(), eager.abs().max().item()


def copy_bandwidth_gbs(device, mb=512):
    """Bytes read + written per second by a large copy, best of 5 (the decode ceiling's denominator)."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="demo", choices=["demo", "small", "7b"])
    ap.add_argument("--layers", type=int, help="decoder layers of a random model (default: all of its shape)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", help="default: float32 on cpu, bfloat16 on a GPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", help="JSON output (default: results-compiled-SIZE[-lN]-DEVICE.json beside this script)")
    ap.add_argument("--warm", action="store_true", help="keep torch's compile cache from earlier runs (default: an "
                    "empty one, so that the compile time is what a first run pays)")
    args = ap.parse_args()
    if not args.warm:  # inductor reads its cache folder when it first compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="minillava-inductor-")
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    if args.size == "demo":
        model, _ = minillava.load(device=args.device, dtype=dtype)
    else:
        model = random_model(args.size, args.layers, args.device, dtype)
    ids, pv = image_prompt(model, args.size)
    load_before = os.getloadavg()[0]  # what else the machine runs: a shared machine's figures depend on it

    decode_run(model, ids, pv, args.new_tokens, compile=False)  # warm-up
    start = time.perf_counter()
    decode_run(model, ids, pv, args.new_tokens, compile=True)  # compiles, then runs
    first_compiled_run_s = time.perf_counter() - start
    runs = {"eager": [], "compiled": []}
    same_tokens = True
    for r in range(args.repeats):
        order = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
        got = {}
        for mode in order:
            tok_s, got[mode] = decode_run(model, ids, pv, args.new_tokens, compile=mode == "compiled")
            runs[mode].append(tok_s)
        same_tokens &= torch.equal(got["eager"], got["compiled"])
        print(f"repeat {r}: eager {runs['eager'][-1]:.1f}, compiled {runs['compiled'][-1]:.1f} tokens/s", flush=True)
    ratios = [c / e for c, e in zip(runs["compiled"], runs["eager"])]
    difference, largest = step_logits_difference(model, ids, pv)
    lm = model.language_model
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters()) \
        - lm.model.embed_tokens.weight.numel() * lm.model.embed_tokens.weight.element_size()
    bandwidth = copy_bandwidth_gbs(args.device)
    result = {
        "size": args.size, "layers": args.layers or model.config.text_config.num_hidden_layers,
        "device": args.device, "dtype": str(dtype).removeprefix("torch."),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"threads {torch.get_num_threads()}"
                   + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "command": "python " + " ".join(sys.argv),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "compile_cache": "warm (torch's, from earlier runs)" if args.warm else "empty",
        "new_tokens": args.new_tokens, "prompt_tokens": ids.shape[1],
        "compile_s": [{"batch": b, "cache": n, "seconds": t} for (b, n), t in compiled.compile_seconds(model).items()],
        "first_compiled_run_s": first_compiled_run_s,
        "median_tok_s": {mode: statistics.median(v) for mode, v in runs.items()},
        "median_ratio_compiled_over_eager": statistics.median(ratios),
        "greedy_tokens_equal": same_tokens,
        "step_logits_max_difference": difference, "step_logits_max": largest,
        "decode_bytes_per_token": weight_bytes, "copy_bandwidth_gbs": bandwidth,
        "fraction_of_copy_bandwidth": {mode: statistics.median(v) * weight_bytes / (bandwidth * 1e9)
                                       for mode, v in runs.items()},
        "runs_tok_s": runs, "ratios": ratios,
    }
    layers = f"-l{args.layers}" if args.layers else ""
    out = Path(args.out or Path(__file__).parent / f"results-compiled-{args.size}{layers}-{args.device}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("compile_s", "median_tok_s", "median_ratio_compiled_over_eager",
                                             "greedy_tokens_equal", "step_logits_max_difference",
                                             "fraction_of_copy_bandwidth")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
