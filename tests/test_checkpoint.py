"""Weight files: a missing, truncated, corrupt, pickled or mismatched checkpoint raises a CheckpointError naming
the file and the tensor; nothing is ever unpickled.
"""
import io
import json
import pickle
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import minillava
from minillava import (
    CheckpointError,
    load_model,
)
from tests.helpers import checkpoints as C
from tests.helpers.mistakes import (
    edit_config,
    raises,
)

# ---- checkpoint folders: weight files ----------------------------------------------------------------------

def shard(folder, n=2):
    """Turn the single model.safetensors into n shards + model.safetensors.index.json."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    C.write_safetensors(folder, state, shards=n)
    return json.loads((folder / "model.safetensors.index.json").read_text())


def test_index_problems(ckpt):
    index = shard(ckpt)
    path = ckpt / "model.safetensors.index.json"
    assert load_model(ckpt).config.text_config.vocab_size == 64  # the sharded copy is valid
    (ckpt / "model-00002-of-00002.safetensors").rename(ckpt / "elsewhere.safetensors")
    raises(CheckpointError, "model-00002-of-00002.safetensors", "missing", call=lambda: load_model(ckpt))
    (ckpt / "elsewhere.safetensors").rename(ckpt / "model-00002-of-00002.safetensors")
    for text, why in [("{not json", "not a valid safetensors index"), ('{"metadata": {}}', "weight_map"),
                      ('{"weight_map": [1, 2]}', "weight_map"), ('{"weight_map": {}}', "names no shard"),
                      ('{"weight_map": {"a": 3}}', "names no shard"), ("[" * 100000, "not a valid"),
                      (json.dumps({"weight_map": {**index["weight_map"], "x": "../model.safetensors"}}),
                       "'../model.safetensors'"),
                      (json.dumps({"weight_map": {"x": "/etc/passwd"}}), "'/etc/passwd'")]:
        path.write_text(text)
        raises(CheckpointError, path, why, call=lambda: load_model(ckpt))


def write_with_header(path, header, body):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)


def test_corrupt_safetensors_files(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    cases = {"truncated": data[: len(data) - 100], "truncated header": data[:8 + n // 2], "empty": b"",
             "shorter than the length prefix": data[:5], "garbage header": data[:8] + b"\x00" * n + data[8 + n:],
             "header not UTF-8": data[:8] + b"\xff" * n + data[8 + n:],
             "huge header length": struct.pack("<Q", 2 ** 63) + data[8:],
             "header length beyond the file": struct.pack("<Q", len(data)) + data[8:],
             "trailing bytes": data + b"\x00" * 16, "a pickle, renamed": pickle.dumps({"a": 1}) * 10}
    for why, content in cases.items():
        path.write_bytes(content)
        raises(CheckpointError, path, "not a readable safetensors file", call=lambda: load_model(ckpt))
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    key = "language_model.lm_head.weight"
    for change in [dict(data_offsets=[0, 10 ** 12]), dict(data_offsets=[4096, 0]), dict(dtype="F64"),
                   dict(shape=[2 ** 40, 2 ** 40]), dict(shape=[-1, 16]), dict(dtype="NOPE")]:
        write_with_header(path, {**header, key: {**header[key], **change}}, body)
        raises(CheckpointError, path, call=lambda: load_model(ckpt))


def test_tensors_that_do_not_fit_the_config(ckpt):
    path = ckpt / "model.safetensors"
    state = load_file(path)
    key = "multi_modal_projector.linear_1.weight"
    for broken, names in [
        ({k: v for k, v in state.items() if k != "language_model.model.norm.weight"},
         ["missing", "language_model.model.norm.weight"]),
        ({**state, "vision_tower.vision_model.extra.weight": torch.zeros(2)}, ["fit no parameter", "extra.weight"]),
        ({**state, key: torch.zeros(16, 7)}, [key, "[16, 7]", "[16, 8]"]),
        ({**state, key: state[key].T.contiguous()}, [key, "[8, 16]", "[16, 8]"]),
        ({**state, key: state[key].to(torch.int32)}, [key, "I32"]),
        ({**state, key: state[key].to(torch.float8_e4m3fn)}, [key, "F8_E4M3", "quantized"]),
        ({**state, key: state[key].to(torch.complex64)}, [key, "C64"]),
        ({**state, "model.language_model.norm.weight": state["language_model.model.norm.weight"].clone()},
         ["also stored"]),
    ]:
        save_file(broken, str(path))
        raises(CheckpointError, *names, call=lambda: load_model(ckpt))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):  # float files of any width load, converted
        save_file({k: v.to(dtype) for k, v in state.items()}, str(path))
        assert load_model(ckpt).dtype == torch.float32
    # a config that does not fit the weights never loads
    edit_config(ckpt, lambda c: c["text_config"].update(intermediate_size=48))
    raises(CheckpointError, "mlp.gate_proj.weight", "[32, 16]", "[48, 16]", call=lambda: load_model(ckpt))
    edit_config(ckpt, lambda c: c["text_config"].update(intermediate_size=32, num_hidden_layers=2))
    raises(CheckpointError, "text_config.num_hidden_layers = 2", "1 layer", call=lambda: load_model(ckpt))
    edit_config(ckpt, lambda c: c["text_config"].update(num_hidden_layers=10 ** 9))  # refused before building anything
    raises(CheckpointError, "num_hidden_layers = 1000000000", call=lambda: load_model(ckpt))


class Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_checkpoints_are_refused_never_unpickled(ckpt, tmp_path):
    marker = tmp_path / "pickle-was-executed"
    payload = pickle.dumps({"language_model.lm_head.weight": Marker(marker)})
    pickle.loads(payload)  # the payload works: loading it does create the marker
    assert marker.exists()
    marker.unlink()
    (ckpt / "model.safetensors").unlink()
    for name in ("pytorch_model.bin", "model.pt", "pytorch_model-00001-of-00002.bin"):
        (ckpt / name).write_bytes(payload)
        raises(CheckpointError, name, "never unpickles", call=lambda: load_model(ckpt))
        raises(CheckpointError, name, call=lambda: minillava.load(ckpt))
        (ckpt / name).unlink()
    (ckpt / "model.safetensors").write_bytes(payload)  # a pickle under the safetensors name
    raises(CheckpointError, "model.safetensors", call=lambda: load_model(ckpt))
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "m": Marker(marker)}, buf)  # the zip format torch.save writes
    (ckpt / "model.safetensors").write_bytes(buf.getvalue())
    raises(CheckpointError, "model.safetensors", call=lambda: load_model(ckpt))
    assert not marker.exists()


def test_no_pickle_outside_original():
    """Only minillava/original/reading.py may unpickle, and only with torch.load(weights_only=True)."""
    import ast
    root = Path(minillava.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        loads = [c for c in calls if ast.unparse(c.func) in ("torch.load", "pickle.load", "pickle.loads")]
        assert not [c for c in calls if ast.unparse(c.func) in ("eval", "exec")], path
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imports & {"joblib", "dill"}
        if path.relative_to(root).as_posix() == "original/reading.py":
            assert loads and all(ast.unparse(c.func) == "torch.load" and any(
                k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in c.keywords) for c in loads)
        else:
            assert not loads, path


def test_folder_that_is_a_file_or_missing(tiny, tmp_path):
    raises(CheckpointError, tmp_path / "nowhere", "no such checkpoint folder",
           call=lambda: load_model(tmp_path / "nowhere"))
    raises(CheckpointError, tiny / "model.safetensors", "got a file",
           call=lambda: load_model(tiny / "model.safetensors"))
    raises(CheckpointError, tiny / "config.json", "got a file", call=lambda: minillava.load(tiny / "config.json"))
    raises(CheckpointError, tmp_path, "no model.safetensors", call=lambda: load_model(
        Path(shutil.copy(tiny / "config.json", tmp_path / "config.json")).parent))
