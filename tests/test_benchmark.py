"""The benchmark in its seconds-long smoke form: it runs end to end and reports (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_benchmark_smoke(tmp_path):
    # 24 new tokens: decode speed is (time of 25 tokens - time of 1) / 24, and with a handful the difference of
    # two millisecond-long runs on a loaded machine could come out negative
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--size", "tiny", "--repeats", "1",
                          "--new-tokens", "24", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "decode tok/s, batch 1" in run.stdout and "ceiling" in run.stdout
    result = json.loads(out.read_text())
    for impl in ("minillava", "transformers"):
        m = result["median"][impl]
        assert m["load_s"] > 0 and m["ttft_s"] > 0 and m["decode_tok_s_b1"] > 0 and m["decode_tok_s_b4"] > 0
    assert result["copy_bandwidth_gbs"] > 0 and result["decode_ceiling_tok_s"] > 0
