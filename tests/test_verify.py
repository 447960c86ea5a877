"""minillava verify: passes on the demo and on every minillava.testing variant, and names the file or tensor
of a broken download (a truncated shard, a missing shard, a config.json from another model)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minillava
from minillava import CheckpointError, testing
from minillava.cli import main
from minillava.original import convert_original
from tests.helpers import HANG_S
from tests.test_compare import Buffer

verify_module = sys.modules["minillava.verification"]


def assert_verified(report):
    assert report.passed and report.exit_status == 0, str(report)
    assert len(report.comparisons) == 2, str(report)  # transformers is installed for the tests
    inputs, model = report.comparisons
    assert [r.name for r in inputs.rows] == ["input_ids", "attention_mask", "pixel_values"]
    assert [r.name for r in model.rows] == ["attention_mask", "logits", "greedy_tokens"]
    assert all(r.max_abs == 0.0 for r in inputs.rows + model.rows), str(report)  # fp32 on CPU: exact
    assert report.answer


def test_demo():
    report = minillava.verify(minillava.DEMO, device="cpu")
    assert_verified(report)
    assert "circle" in report.answer or "square" in report.answer or "triangle" in report.answer, report.answer


@pytest.mark.parametrize("variant", list(testing.VARIANTS))
def test_every_testing_variant(variant, tmp_path):
    folder = testing.write_checkpoint(tmp_path / variant, variant, seed=2, max_shard_bytes=150_000)
    assert_verified(minillava.verify(folder, device="cpu"))


def test_original_layout_once_converted(tmp_path):
    llava, clip = testing.write_original(tmp_path / "original")
    assert_verified(minillava.verify(convert_original(llava, clip, tmp_path / "hf"), device="cpu"))


@pytest.fixture
def sharded(tmp_path):
    folder = testing.write_checkpoint(tmp_path / "mha", "mha", max_shard_bytes=100_000)
    assert len(list(folder.glob("model-*.safetensors"))) >= 3
    return folder


def run_cli(capsys, *args):
    out = Buffer()
    status = main(["verify", *map(str, args)], stdout=out)
    err = capsys.readouterr().err
    return status, out.text, err


def test_truncated_shard_is_named(sharded, capsys):
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) - 1000])
    with pytest.raises(CheckpointError, match=f"{shard.name}: {len(data) - 1000} bytes, but its header describes "
                                              f"{len(data)} \\(truncated download"):
        minillava.verify(sharded, device="cpu")
    status, out, err = run_cli(capsys, sharded, "--device", "cpu")
    assert status == 2 and err.count("\n") == 1 and shard.name in err and "Traceback" not in err


def test_missing_shard_is_named(sharded, capsys):
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    shard.unlink()
    status, out, err = run_cli(capsys, sharded, "--device", "cpu")
    assert status == 2 and err.count("\n") == 1 and f"names shard {shard.name}, which is missing" in err


def test_config_from_another_model_names_the_tensor(tmp_path, capsys):
    folder = testing.write_checkpoint(tmp_path / "mha", "mha")
    other = testing.write_checkpoint(tmp_path / "gqa", "gqa")
    shutil.copyfile(other / "config.json", folder / "config.json")  # GQA: 2 key/value heads instead of 4
    status, out, err = run_cli(capsys, folder, "--device", "cpu")
    assert status == 2 and err.count("\n") == 1, err
    key = "'language_model.model.layers.0.self_attn.k_proj.weight'"
    assert f"{key} has shape [64, 64], config.json implies [32, 64]" in err
    shutil.copyfile(minillava.DEMO / "config.json", folder / "config.json")  # another model altogether
    status, out, err = run_cli(capsys, folder, "--device", "cpu")
    assert status == 2 and "num_hidden_layers = 4, but the files hold 2 layer(s)" in err


def test_index_and_shard_disagree(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = "model-00002-of-" + index["weight_map"][key].split("-of-")[1]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"lists '{key}' in this file, which does not hold it"):
        minillava.verify(sharded, device="cpu")


def test_processor_files_against_config(tmp_path):
    folder = testing.write_checkpoint(tmp_path / "mha", "mha")
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre["crop_size"] = {"height": 336, "width": 336}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(minillava.ConfigError, match="preprocessor_config.json: images are cropped to"):
        minillava.verify(folder, device="cpu")


def test_a_disagreement_exits_1(tmp_path, monkeypatch, capsys):
    folder = testing.write_checkpoint(tmp_path / "mha", "mha")
    reference = verify_module.reference_outputs

    def drifting(*args):
        out = reference(*args)
        out["logits"][0, -1, 7] += 0.01
        return out
    monkeypatch.setattr(verify_module, "reference_outputs", drifting)
    status, out, err = run_cli(capsys, folder, "--device", "cpu")
    assert status == 1, out + err
    assert "first drift: logits, largest difference at row 0, position" in out and "vocab id 7" in out
    assert "DISAGREE" in out


def test_works_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None  # as if not installed\n"
            "from minillava.cli import main\n"
            f"sys.exit(main(['verify', {str(minillava.DEMO)!r}, '--device', 'cpu']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "transformers is not installed" in run.stdout and "answer: " in run.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_on_cuda_in_half_precision(tmp_path, dtype):
    folder = testing.write_checkpoint(tmp_path / "gqa", "gqa", dtype=getattr(torch, dtype))
    report = minillava.verify(folder)  # CUDA by default, in the checkpoint's dtype
    assert report.passed, str(report)
    assert f"on cuda, torch.{dtype}" in str(report)


def test_transformers_failing_on_the_folder_is_a_disagreement(tmp_path, monkeypatch, capsys):
    folder = testing.write_checkpoint(tmp_path / "mha", "mha")

    def refusing(*args):
        raise OSError("Can't load the configuration\nof this folder")
    monkeypatch.setattr(verify_module, "reference_outputs", refusing)
    status, out, err = run_cli(capsys, folder, "--device", "cpu")
    assert status == 1 and "could not run it: OSError: Can't load the configuration" in out and "DISAGREE" in out
