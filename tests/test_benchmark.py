"""The benchmark in its seconds-long smoke form: it runs end to end and reports (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HANG_S

ROOT = Path(__file__).parent.parent


def test_benchmark_smoke(tmp_path):
    # 24 new tokens: decode speed is (time of 25 tokens - time of 1) / 24, and with a handful the difference of
    # two millisecond-long runs on a loaded machine could come out negative
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--size", "tiny", "--repeats", "1",
                          "--new-tokens", "24", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "decode tok/s, batch 1" in run.stdout and "ceiling" in run.stdout
    result = json.loads(out.read_text())
    for impl in ("minillava", "transformers"):
        m = result["median"][impl]
        assert m["load_s"] > 0 and m["ttft_s"] > 0 and m["decode_tok_s_b1"] > 0 and m["decode_tok_s_b4"] > 0
    assert result["copy_bandwidth_gbs"] > 0 and result["decode_ceiling_tok_s"] > 0


@pytest.mark.slow
def test_slice_speed_comparison_beside_a_busy_process(tmp_path):
    """The stored / materialized comparison of the 7b-slice benchmark, on a slice shrunk to seconds: it starts
    the busy process, reports, and leaves no busy process behind."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import slice7b
    text = dict(slice7b.TEXT_7B, hidden_size=64, intermediate_size=160, num_attention_heads=4)
    vision = dict(slice7b.VISION, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
    folder = slice7b.build(tmp_path / "slice", 1, text, vision)  # 336-px images, the real 32064-token vocabulary
    out = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--size", "7b-slice", "--paired-only",
                          "--beside", "busy", "--rounds", "1", "--ckpt", str(folder), "--out", str(out)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "beside one busy process" in run.stdout and "decode >= 0.80 x materialized" in run.stdout
    got = json.loads(out.read_text())
    busy = got["paired"]["busy"]
    assert set(got["paired"]) == {"busy"} and busy["decode_vs_materialized"] > 0 and busy["ttft_vs_materialized"] > 0
    assert len(busy["runs"]["stored"]["step_s"]) == len(busy["runs"]["materialized"]["step_s"]) == 8
    assert busy["busy_pid"] and not _runs_busy_loop(busy["busy_pid"])


def _runs_busy_loop(pid):
    try:
        return "ending with the benchmark" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # gone
        return False


def test_widening_benchmark_smoke(tmp_path):
    """benchmarks/widening.py on a small matrix: the block-wise product it times is checked exact, and it reports
    every part of a block's cost."""
    out = tmp_path / "widening.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "widening.py"), "--rows", "256", "--cols", "512",
                          "--copies", "2", "--repeats", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "widen from memory + multiply from the cache" in run.stdout
    got = json.loads(out.read_text())
    assert set(got["median"]) == {"float32_ms", "stored_ms", "block_widen_from_memory_us", "block_widen_us",
                                  "block_product_us", "block_copy_us"}
    assert all(len(v) == 2 and min(v) > 0 for v in got["runs"].values())
    assert got["block_rows"] == 256 and got["bound_from_blocks"] > 0
