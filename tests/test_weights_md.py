"""weights.md stays true to the code: its checked tables are recomputed from the real config.json texts, its key
aliases from minillava.checkpoint.canonical_key, and its Python snippet runs on complete and broken folders."""
import ast
import re
import sys
from pathlib import Path

import pytest
import torch

from minillava import CheckpointError, Llava, LlavaConfig, load_model
from minillava.checkpoint import canonical_key
from tests.helpers import checkpoints as C
from tests.test_llava import REAL_CONFIGS

DOC = (Path(__file__).parent.parent / "weights.md").read_text(encoding="utf-8")
NAMES = list(REAL_CONFIGS)  # llava-1.5-7b-hf, llava-1.5-13b-hf, bakLlava-v1-hf: the names the tables use


def section(name):
    """The text between <!-- check: name --> and <!-- /check -->."""
    m = re.search(rf"<!-- check: {name} -->\n(.*?)<!-- /check -->", DOC, re.S)
    assert m, f"weights.md has no '<!-- check: {name} -->' section"
    return m.group(1)


def rows(name):
    """The table of a checked section as lists of cells, header and separator left out."""
    lines = [line for line in section(name).splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def number(cell):
    """The first integer written with thousands separators in a cell: '14,126,854,144 B (14.13 GB)' -> 14126854144."""
    return int(re.match(r"[\d,]+", cell).group().replace(",", ""))


def model(name):
    cfg = LlavaConfig.from_dict(REAL_CONFIGS[name])
    with torch.device("meta"):
        return cfg, Llava(cfg)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_every_checkpoint_in_every_table():
    for table in ("params", "memory", "kv"):
        assert [r[0] for r in rows(table)] == NAMES, table


def test_parameter_counts():
    for name, vision, projector, language, total in rows("params"):
        _, m = model(name)
        assert [number(c) for c in (vision, projector, language, total)] == [
            count(m.vision_tower), count(m.multi_modal_projector), count(m.language_model), count(m)], name
    # and the totals the hub's model cards publish
    assert [number(r[-1]) for r in rows("params")] == [7_063_427_072, 13_351_494_656, 7_566_743_552]


def test_weight_memory():
    for name, fp32, half in rows("memory"):
        _, m = model(name)
        n = count(m)
        assert (number(fp32), number(half)) == (4 * n, 2 * n), name
        for cell, nbytes in ((fp32, 4 * n), (half, 2 * n)):  # the rounded GB agree too
            assert re.search(r"\(([\d.]+) GB\)", cell).group(1) == f"{nbytes / 1e9:.2f}", cell


def test_kv_cache_per_token():
    for name, values, fp32, half, context in rows("kv"):
        cfg, m = model(name)
        t = cfg.text_config
        per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim
        assert number(values) == per_token, name
        assert (number(fp32), number(half), number(context)) == (4 * per_token, 2 * per_token, 2 * per_token * 4096)
        # what the cache minillava allocates actually holds
        cache = m.language_model.new_cache(1, 1, device="meta", dtype=torch.float16)
        assert sum(x.numel() * x.element_size() for x in cache.k + cache.v) == 2 * per_token


def test_tensor_counts():
    counts = {name: len(model(name)[1].state_dict()) for name in NAMES}
    seven, thirteen = counts["llava-1.5-7b-hf"], counts["llava-1.5-13b-hf"]
    assert f"That is {seven} tensors for 7b and bakLlava, {thirteen} for 13b" in DOC
    assert counts["llava-1.5-7b-hf"] == counts["bakLlava-v1-hf"]


def test_key_aliases():
    table = rows("keys")
    assert len(table) >= 10
    for stored, _, read_as in table:
        want = None if read_as == "dropped" else read_as.strip("`")
        assert canonical_key(stored.strip("`")) == want, stored
    _, m = model("llava-1.5-7b-hf")
    names = set(m.state_dict())
    assert all(r[2].strip("`") in names for r in table if r[2] != "dropped")  # real parameters of the model


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: llama, silu, default


def _in_file(d, path):
    """Whether config.json itself gives the field (rather than leaving it to a default)."""
    *parents, key = path.split(".")
    for p in parents:
        d = d.get(p) or {}
    aliases = {"rope_theta": ("rope_theta", "rope_parameters", "rope_scaling"), "dtype": ("dtype", "torch_dtype"),
               "image_token_index": ("image_token_index", "image_token_id")}
    return any(k in d for k in aliases.get(key, (key,)))


def test_config_defaults():
    table = rows("defaults")
    assert len(table) >= 30
    for field, *cells in table:
        path = field.strip("`")
        for name, cell in zip(NAMES, cells):
            cfg = LlavaConfig.from_dict(REAL_CONFIGS[name])
            value = cfg
            for part in path.split("."):
                value = getattr(value, part)
            text = cell.strip("`")
            starred = text.endswith("*")
            assert _literal(text.rstrip("*")) == value, (path, name, cell, value)
            assert starred == (not _in_file(REAL_CONFIGS[name], path)), (path, name, "the * is wrong")


def _snippet():
    m = re.search(r"```python\n(.*?)```", section("snippet"), re.S)
    return m.group(1)


def _run_snippet(folder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["check_download.py", str(folder)])
    with pytest.raises(SystemExit) as exit_:
        exec(compile(_snippet(), "weights.md", "exec"), {"__name__": "__main__"})
    return exit_.value.code, capsys.readouterr().out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return C.build(tmp_path_factory.mktemp("doc") / "sharded", "gqa", shards=3, processor=False)


def test_snippet_passes_a_complete_folder(sharded, monkeypatch, capsys):
    code, out = _run_snippet(sharded, monkeypatch, capsys)
    assert code == 0 and out.rstrip().endswith("complete"), out
    assert f"{count(load_model(sharded)):,} parameters" in out


def test_snippet_catches_broken_folders(sharded, tmp_path, monkeypatch, capsys):
    import shutil
    shards = sorted(sharded.glob("model-*.safetensors"))

    missing = shutil.copytree(sharded, tmp_path / "missing")
    (missing / shards[1].name).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        _run_snippet(missing, monkeypatch, capsys)

    truncated = shutil.copytree(sharded, tmp_path / "truncated")
    data = (truncated / shards[0].name).read_bytes()
    (truncated / shards[0].name).write_bytes(data[: len(data) // 2])
    from safetensors import SafetensorError
    with pytest.raises(SafetensorError):
        _run_snippet(truncated, monkeypatch, capsys)

    # a shard that holds fewer tensors than the index says (an older or mismatched file)
    from safetensors import safe_open
    from safetensors.torch import save_file
    short = shutil.copytree(sharded, tmp_path / "short")
    with safe_open(short / shards[2].name, framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in list(f.keys())[1:]}
    save_file(kept, str(short / shards[2].name))
    code, out = _run_snippet(short, monkeypatch, capsys)
    assert code == 1 and "no shard holds" in out and "missing" in out, out

    # a config.json that does not describe these weights
    other = shutil.copytree(sharded, tmp_path / "other")
    text = (other / "config.json").read_text().replace('"intermediate_size": 128', '"intermediate_size": 96')
    (other / "config.json").write_text(text)
    code, out = _run_snippet(other, monkeypatch, capsys)
    assert code == 1 and "wrong shape" in out, out


def test_published_sizes_consistent():
    """The 7b hub shards (4.99 + 4.96 + 4.18 GB) hold the fp16 parameters; the original's index total_size is the
    fp16 decoder with a 32000-row vocabulary + projector + 32 float32 inv_freq buffers of 64 numbers."""
    _, m = model("llava-1.5-7b-hf")
    assert abs(2 * count(m) / 1e9 - (4.99 + 4.96 + 4.18)) < 0.02
    for name, total in (("llava-1.5-7b-hf", "13,518,798,848"), ("llava-1.5-13b-hf", "26,094,673,920")):
        cfg, m = model(name)
        t = cfg.text_config
        original = count(m.language_model) - 2 * (t.vocab_size - 32000) * t.hidden_size + count(m.multi_modal_projector)
        assert f"{2 * original + t.num_hidden_layers * (t.head_dim // 2) * 4:,}" == total
        assert total in DOC
    assert f"{sum(p.numel() for p in m.vision_tower.vision_model.encoder.layers[-1].parameters()) + 2 * 1024:,}" in DOC


MODES = {"float32 stored": (torch.float32, "stored"), "float32 materialized": (torch.float32, "materialized"),
         "float16": (torch.float16, "stored")}


def test_memory_each_mode_needs(tmp_path):
    """The figures the memory check computes, on full-size 7b and 13b checkpoints whose files are all hole."""
    from minillava import loading
    from minillava.checkpoint import stored_tensors
    table = rows("modes")
    assert {(r[0], r[1], r[2]) for r in table} == {(n, d, m) for n in NAMES[:2] for d in ("cpu", "cuda") for m in MODES}
    for name in NAMES[:2]:
        folder = C.sparse_checkpoint(tmp_path / name, REAL_CONFIGS[name])
        tensors = stored_tensors(folder)
        cfg, m = model(name)
        for _, device, mode, need, machine in (r for r in table if r[0] == name):
            dtype, weights = MODES[mode]
            total = sum(loading.mode_memory(m, tensors, folder, dtype, weights).values())
            assert need == f"{total / 1e9:.1f} GB", (name, device, mode)
            size = int(re.search(r"(\d+) GB", machine).group(1)) * 2**30  # RAM and GPUs come in GiB
            # the machine named leaves room: 15% of RAM for the system and other programs, 5% of a GPU for the driver
            assert total < size * (0.85 if device == "cpu" else 0.95), (name, device, mode, machine)


def test_fine_tuning_memory():
    """weights + gradients + AdamW states: float32 4 bytes per parameter + 12 per trained one; bfloat16 mixed
    precision 2 per parameter + 14 per trained one (bf16 gradient, float32 master copy and AdamW states)."""
    table = rows("finetune")
    assert [(r[0], r[1]) for r in table] == [(n, s) for n in NAMES[:2] for s in ("1", "2")]
    for name, stage, trained, fp32, mixed in table:
        _, m = model(name)
        parts = ["multi_modal_projector"] + (["language_model"] if stage == "2" else [])
        n, t = count(m), sum(count(getattr(m, part)) for part in parts)
        assert number(trained) == t, name
        for cell, nbytes in ((fp32, 4 * n + 12 * t), (mixed, 2 * n + 14 * t)):
            assert number(cell) == nbytes and f"({nbytes / 1e9:.2f} GB)" in cell, (name, stage, cell)


def test_activations_with_gradient_checkpointing():
    """Per 2,048-token sequence: every decoder layer's input in bfloat16, the logits in float32; and the figures
    for finetune.sh's 16 sequences per GPU."""
    table = rows("activations")
    assert [r[0] for r in table] == NAMES[:2]
    for name, inputs, logits in table:
        cfg, _ = model(name)
        t = cfg.text_config
        layer_inputs = t.num_hidden_layers * 2048 * t.hidden_size * 2  # bfloat16
        for cell, nbytes in ((inputs, layer_inputs), (logits, 2048 * t.vocab_size * 4)):
            assert number(cell) == nbytes and f"({nbytes / 1e9:.2f} GB)" in cell, (name, cell)
    seven, thirteen = (rows("activations")[i] for i in (0, 1))
    assert (f"{16 * number(seven[1]) / 1e9:.2f} GB of layer inputs and {16 * number(seven[2]) / 1e9:.2f} GB of logits "
            f"for 7b, {16 * number(thirteen[1]) / 1e9:.2f} GB and {16 * number(thirteen[2]) / 1e9:.2f} GB for 13b") in \
        " ".join(DOC.split())
