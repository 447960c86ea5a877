"""benchmarks/train_step.py in its smoke form: both implementations take the same training step on the tiny
benchmark checkpoint (the same first loss, the same trained parameters), and the figures are written (no timing
is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import HANG_S

ROOT = Path(__file__).parent.parent


def test_train_step_benchmark_smoke(tmp_path):
    out = tmp_path / "train-step.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--size", "tiny", "--rounds",
                          "1", "--steps", "1", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step time (s)" in run.stdout and "peak memory of a step (MB)" in run.stdout
    result = json.loads(out.read_text())
    for impl in ("minillava", "transformers"):
        assert result["median"][impl]["step_s"] > 0 and result["median"][impl]["peak_mb"] > 0
    assert len(result["pair_ratios"]["step_s"]) == 1 and result["ratio"]["step_s"] == result["pair_ratios"]["step_s"][0]
    assert result["batch"]["records"] == 2 and result["batch"]["labelled"] > 0 and result["trained_params"] > 0
