"""What a decode step's stored weight costs, block by block, on one core: why the stored mode's decode (float16
files widened to float32 as they are used, minillava/layers.py) trails float32 weights on a quiet machine.

    python benchmarks/widening.py                    # the 7b's MLP matrix, 11008 x 4096, on one thread
    python benchmarks/widening.py --rows 256 --cols 512 --copies 2 --repeats 3 --out /tmp/w.json   # the smoke test

For one input row (a decode step) it times, on one thread, alternated over `--repeats` rounds:
- float32: F.linear over float32 copies of the matrix, cycling through `--copies` of them so that together they
  outgrow the caches and every weight streams from memory (the materialized mode);
- stored: layers.linear_widened over float16 copies, block by block (the stored mode);
- its parts, per block of rows: widening every block of every copy in turn (copy_ float16 -> float32, the float16
  rows read from memory, as the stored mode reads them), then one block held in the cache: widened, multiplied,
  and, for scale, copied as float16 (the bytes moved without the conversion).
The stored mode can only match float32 when widening a block (its rows read from memory) and multiplying it from
the cache cost less than streaming the block's float32 rows from memory; the last lines print both.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minillava import layers  # noqa: E402


def per_call(fn, n):
    """Seconds per call of fn, over n calls after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=11008, help="output features (the 7b's MLP: 11008)")
    ap.add_argument("--cols", type=int, default=4096, help="input features (the 7b's width: 4096)")
    ap.add_argument("--copies", type=int, default=8, help="matrices cycled through (8 x 11008 x 4096 x 4 bytes "
                                                          "= 1.4 GB of float32: more than any cache)")
    ap.add_argument("--repeats", type=int, default=7, help="alternated rounds; the medians are reported")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results-widening.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    N, K = a.rows, a.cols
    stored = [torch.randn(N, K).half() for _ in range(a.copies)]
    floats = [w.float() for w in stored]
    x = torch.randn(1, K)
    for w16, w32 in zip(stored, floats):  # the measured shape's block-wise product, checked once, exact
        assert torch.equal(layers.linear_widened(x, w16), F.linear(x, w32))
    rows = min(N, layers.block_rows(K, 4))  # linear_widened's block of float32 rows
    block16 = stored[0][:rows].clone()
    block32, half = torch.empty(rows, K), torch.empty(rows, K, dtype=torch.float16)
    out = torch.empty(1, rows)
    every_block = [w[i:i + rows] for w in stored for i in range(0, N - rows + 1, rows)]  # whole blocks only

    def widen_every_block():
        for b in every_block:
            block32.copy_(b)
    runs = {"float32_ms": [], "stored_ms": [], "block_widen_from_memory_us": [], "block_widen_us": [],
            "block_product_us": [], "block_copy_us": []}
    for _ in range(a.repeats):
        runs["float32_ms"].append(per_call(lambda: [F.linear(x, w) for w in floats], 2) / a.copies * 1e3)
        runs["stored_ms"].append(per_call(lambda: [layers.linear_widened(x, w) for w in stored], 2) / a.copies * 1e3)
        runs["block_widen_from_memory_us"].append(per_call(widen_every_block, 1) / len(every_block) * 1e6)
        runs["block_widen_us"].append(per_call(lambda: block32.copy_(block16), 200) * 1e6)
        runs["block_product_us"].append(per_call(lambda: torch.mm(x, block32.t(), out=out), 200) * 1e6)
        runs["block_copy_us"].append(per_call(lambda: half.copy_(block16), 200) * 1e6)
    med = {k: statistics.median(v) for k, v in runs.items()}
    blocks = -(-N // rows)
    stream_us = med["float32_ms"] * 1e3 / blocks  # float32 time per block's worth of rows, streamed from memory
    result = {"rows": N, "cols": K, "copies": a.copies, "block_rows": rows, "threads": 1, "torch": torch.__version__,
              "median": med, "runs": runs, "float32_per_block_us": stream_us,
              "stored_vs_float32_speed": med["float32_ms"] / med["stored_ms"],
              "bound_from_blocks": stream_us / (med["block_widen_from_memory_us"] + med["block_product_us"]),
              "command": "python " + " ".join(sys.argv)}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{N} x {K}, one thread, {a.repeats} alternated rounds (medians); blocks of {rows} rows "
          f"({rows * K * 4 / 2**20:.2f} MB of float32)")
    print(f"  float32 weights, streamed from memory: {med['float32_ms']:.2f} ms a matrix, "
          f"{stream_us:.1f} us per block of rows")
    print(f"  stored float16, widened block by block: {med['stored_ms']:.2f} ms a matrix "
          f"(speed {result['stored_vs_float32_speed']:.2f} of float32)")
    print(f"  a block, its rows read from memory: widen {med['block_widen_from_memory_us']:.1f} us")
    print(f"  a block in the cache: widen {med['block_widen_us']:.1f} us, multiply {med['block_product_us']:.1f} us "
          f"(a plain float16 copy of it: {med['block_copy_us']:.1f} us)")
    print(f"  widen from memory + multiply from the cache: {result['bound_from_blocks']:.2f} of float32's speed at "
          f"best, on one core of this machine")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
