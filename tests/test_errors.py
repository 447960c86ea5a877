"""Bad input never crashes obscurely, never runs untrusted code, never silently gives a wrong answer (issue 8).

Every user mistake raises the minillava exception of its kind, and the message names the file, tensor or value
at fault. The property tests at the end feed random bytes and random mutations of a valid safetensors file and
config.json to the loader and accept only MinillavaError subclasses.
"""
import io
import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

import checkpoints as C
import minillava
from minillava import (CheckpointError, ConfigError, DeviceError, GenerationError, ImageError, Llava, LlavaConfig,
                       MinillavaError, Processor, PromptError, TokenizerError)
from minillava.generate import generate
from minillava.llava import resolve_device, resolve_dtype
from minillava.images import load_image
from tokenizer_files import minimal_config, write_processor_files

# A checkpoint smaller than checkpoints.py's default, so a load costs milliseconds: vocab 64, one layer each.
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 64, "vocab_size": 64, "model_type": "llama"}
VISION = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 28, "patch_size": 14, "model_type": "clip_vision_model"}
IMAGE_ID = 63


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One valid tiny checkpoint folder (config.json + model.safetensors), built once by transformers."""
    return C.build(tmp_path_factory.mktemp("tiny") / "ckpt", "mha", processor=False, text_config=TEXT,
                   vision_config=VISION, image_token_index=IMAGE_ID, pad_token_id=62, vocab_size=64,
                   vision_feature_layer=-1)


@pytest.fixture
def ckpt(tiny, tmp_path):
    """A fresh copy of the tiny checkpoint for a test to break."""
    return Path(shutil.copytree(tiny, tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def model(tiny):
    return Llava.from_pretrained(tiny)


def raises(exc, *names, call):
    """Assert call() raises exactly the minillava type `exc` and that its message names every string in `names`."""
    with pytest.raises(MinillavaError) as e:
        call()
    assert type(e.value) is exc, f"{type(e.value).__name__}: {e.value}"
    for name in names:
        assert str(name) in str(e.value), f"{name!r} not in message: {e.value}"
    return str(e.value)


def edit_config(folder, change):
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


# ---- the exception types -----------------------------------------------------------------------------------

def test_every_exception_is_exported_and_derives_from_minillava_error():
    import minillava.errors as errors
    defined = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, Exception)}
    assert defined == {"MinillavaError", "ConfigError", "CheckpointError", "TokenizerError", "ImageError",
                       "PromptError", "GenerationError", "DeviceError"}
    for name in defined:
        assert getattr(minillava, name) is getattr(errors, name) and name in minillava.__all__
        assert issubclass(getattr(errors, name), errors.MinillavaError)


# ---- checkpoint folders: config.json -----------------------------------------------------------------------

def test_missing_and_invalid_config(ckpt):
    (ckpt / "config.json").unlink()
    raises(ConfigError, ckpt / "config.json", "not found", call=lambda: Llava.from_pretrained(ckpt))
    for text in ['{"model_type": "llava",', "\xff\xfe", "[1, 2]", "1" * 5000, "[" * 100000]:
        (ckpt / "config.json").write_bytes(text.encode("latin-1"))
        raises(ConfigError, ckpt / "config.json", call=lambda: Llava.from_pretrained(ckpt))


@pytest.mark.parametrize("where,key,value", [
    ("text_config", "num_hidden_layers", "32"), ("text_config", "num_hidden_layers", True),
    ("text_config", "num_hidden_layers", 3.5), ("text_config", "num_hidden_layers", None),
    ("vision_config", "hidden_size", None), ("text_config", "rms_norm_eps", "1e-6"), ("text_config", "vocab_size", [64]),
    (None, "image_token_index", "63"), (None, "vision_feature_layer", 1.0), (None, "tie_word_embeddings", "no"),
    (None, "text_config", [1]), (None, "vision_config", "clip")])
def test_config_field_of_the_wrong_type(ckpt, where, key, value):
    edit_config(ckpt, lambda c: (c[where] if where else c).__setitem__(key, value))
    raises(ConfigError, "config.json", key, call=lambda: Llava.from_pretrained(ckpt))


@pytest.mark.parametrize("where,key,value,why", [
    ("vision_config", "num_attention_heads", 3, "not divisible"),  # 8 hidden / 3 heads
    ("text_config", "num_key_value_heads", 3, "not divisible"),  # 2 heads / 3 KV heads
    ("text_config", "num_hidden_layers", 0, "positive"), ("vision_config", "num_hidden_layers", 0, "positive"),
    ("text_config", "hidden_size", -16, "positive"), ("text_config", "vocab_size", -1, "positive"),
    ("vision_config", "patch_size", 5, "multiple"), ("text_config", "head_dim", 3, "even"),
    ("text_config", "rms_norm_eps", float("nan"), "positive finite"), ("text_config", "rope_theta", float("inf"), "finite"),
    ("text_config", "rms_norm_eps", 10 ** 400, "finite"), ("text_config", "sliding_window", 0, "positive"),
    ("text_config", "hidden_act", "relu", "not supported"),
    (None, "vision_feature_layer", 2, "[-2, 1]"), (None, "vision_feature_layer", -3, "[-2, 1]"),
    (None, "vision_feature_layer", [], "non-empty"), (None, "image_token_index", 64, "outside the vocabulary"),
    (None, "image_token_index", -1, "outside the vocabulary"), (None, "vision_feature_select_strategy", "cls", "expected"),
    (None, "projector_hidden_act", "relu", "not supported"), (None, "torch_dtype", "int8", "dtype")])
def test_config_impossible_values(ckpt, where, key, value, why):
    edit_config(ckpt, lambda c: (c[where] if where else c).__setitem__(key, value))
    raises(ConfigError, "config.json", key if key != "torch_dtype" else "dtype", why,
           call=lambda: Llava.from_pretrained(ckpt))


def test_config_sizes_no_model_can_have(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(vocab_size=2 ** 62, hidden_size=2 ** 62, num_attention_heads=2))
    raises(ConfigError, "config.json", call=lambda: Llava.from_pretrained(ckpt))
    edit_config(ckpt, lambda c: c["text_config"].update(vocab_size=10 ** 30))
    raises(ConfigError, "config.json", call=lambda: Llava.from_pretrained(ckpt))


@pytest.mark.parametrize("change,culprit", [
    (lambda c: c.update(model_type="llava_next"), "'llava_next'"),
    (lambda c: c.update(model_type="llava_onevision"), "'llava_onevision'"),
    (lambda c: c.clear() or c.update(model_type="llama", hidden_size=16, architectures=["LlamaForCausalLM"]), "'llama'"),
    (lambda c: c.pop("model_type"), "None"),
    (lambda c: c["text_config"].update(model_type="qwen2"), "'qwen2'"),
    (lambda c: c["vision_config"].update(model_type="siglip_vision_model"), "'siglip_vision_model'"),
    (lambda c: c["text_config"].update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "'llama3'"),
    (lambda c: c.update(mm_vision_tower="openai/clip", text_config=None) or c.pop("text_config"), "minillava.original"),
])
def test_unsupported_architectures(ckpt, change, culprit):
    edit_config(ckpt, change)
    raises(ConfigError, "config.json", culprit, call=lambda: Llava.from_pretrained(ckpt))


def test_config_from_json_alone(tmp_path):
    raises(ConfigError, tmp_path / "config.json", call=lambda: LlavaConfig.from_json(tmp_path))
    (tmp_path / "config.json").write_text("null")
    raises(ConfigError, "config.json", "JSON object", call=lambda: LlavaConfig.from_json(tmp_path))


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
    assert Llava.from_pretrained(ckpt).config.text_config.vocab_size == 64  # the sharded copy is valid
    (ckpt / "model-00002-of-00002.safetensors").rename(ckpt / "elsewhere.safetensors")
    raises(CheckpointError, "model-00002-of-00002.safetensors", "missing", call=lambda: Llava.from_pretrained(ckpt))
    (ckpt / "elsewhere.safetensors").rename(ckpt / "model-00002-of-00002.safetensors")
    for text, why in [("{not json", "not a valid safetensors index"), ('{"metadata": {}}', "weight_map"),
                      ('{"weight_map": [1, 2]}', "weight_map"), ('{"weight_map": {}}', "names no shard"),
                      ('{"weight_map": {"a": 3}}', "names no shard"), ("[" * 100000, "not a valid"),
                      (json.dumps({"weight_map": {**index["weight_map"], "x": "../model.safetensors"}}),
                       "'../model.safetensors'"),
                      (json.dumps({"weight_map": {"x": "/etc/passwd"}}), "'/etc/passwd'")]:
        path.write_text(text)
        raises(CheckpointError, path, why, call=lambda: Llava.from_pretrained(ckpt))


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
        raises(CheckpointError, path, "not a readable safetensors file", call=lambda: Llava.from_pretrained(ckpt))
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    key = "language_model.lm_head.weight"
    for change in [dict(data_offsets=[0, 10 ** 12]), dict(data_offsets=[4096, 0]), dict(dtype="F64"),
                   dict(shape=[2 ** 40, 2 ** 40]), dict(shape=[-1, 16]), dict(dtype="NOPE")]:
        write_with_header(path, {**header, key: {**header[key], **change}}, body)
        raises(CheckpointError, path, call=lambda: Llava.from_pretrained(ckpt))


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
        raises(CheckpointError, *names, call=lambda: Llava.from_pretrained(ckpt))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):  # float files of any width load, converted
        save_file({k: v.to(dtype) for k, v in state.items()}, str(path))
        assert Llava.from_pretrained(ckpt).dtype == torch.float32
    # a config that does not fit the weights never loads
    edit_config(ckpt, lambda c: c["text_config"].update(intermediate_size=48))
    raises(CheckpointError, "mlp.gate_proj.weight", "[32, 16]", "[48, 16]", call=lambda: Llava.from_pretrained(ckpt))
    edit_config(ckpt, lambda c: c["text_config"].update(intermediate_size=32, num_hidden_layers=2))
    raises(CheckpointError, "text_config.num_hidden_layers = 2", "1 layer", call=lambda: Llava.from_pretrained(ckpt))
    edit_config(ckpt, lambda c: c["text_config"].update(num_hidden_layers=10 ** 9))  # refused before building anything
    raises(CheckpointError, "num_hidden_layers = 1000000000", call=lambda: Llava.from_pretrained(ckpt))


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
        raises(CheckpointError, name, "never unpickles", call=lambda: Llava.from_pretrained(ckpt))
        raises(CheckpointError, name, call=lambda: minillava.load(ckpt))
        (ckpt / name).unlink()
    (ckpt / "model.safetensors").write_bytes(payload)  # a pickle under the safetensors name
    raises(CheckpointError, "model.safetensors", call=lambda: Llava.from_pretrained(ckpt))
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "m": Marker(marker)}, buf)  # the zip format torch.save writes
    (ckpt / "model.safetensors").write_bytes(buf.getvalue())
    raises(CheckpointError, "model.safetensors", call=lambda: Llava.from_pretrained(ckpt))
    assert not marker.exists()


def test_no_pickle_outside_original():
    """Only minillava/original.py may unpickle, and only with torch.load(weights_only=True)."""
    import re
    for path in Path(minillava.__file__).parent.rglob("*.py"):
        text = path.read_text()
        if path.name == "original.py":
            calls = re.findall(r"torch\.load\(([^)]*)\)", text)
            assert calls and all("weights_only=True" in c for c in calls) and "pickle.load" not in text
        else:
            assert not re.search(r"torch\.load|pickle\.load|import pickle|joblib|(?<![.\w])(eval|exec)\(", text), path


def test_folder_that_is_a_file_or_missing(tiny, tmp_path):
    raises(CheckpointError, tmp_path / "nowhere", "no such checkpoint folder",
           call=lambda: Llava.from_pretrained(tmp_path / "nowhere"))
    raises(CheckpointError, tiny / "model.safetensors", "got a file",
           call=lambda: Llava.from_pretrained(tiny / "model.safetensors"))
    raises(CheckpointError, tiny / "config.json", "got a file", call=lambda: minillava.load(tiny / "config.json"))
    raises(CheckpointError, tmp_path, "no model.safetensors", call=lambda: Llava.from_pretrained(
        Path(shutil.copy(tiny / "config.json", tmp_path / "config.json")).parent))


# ---- devices and dtypes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "float64", "fp8", torch.int8, torch.float64, 3, "auto"])
def test_dtype_that_cannot_run(tiny, dtype):
    raises(DeviceError, "dtype", str(dtype).removeprefix("torch."), call=lambda: Llava.from_pretrained(tiny, dtype=dtype))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 3.5, "meta", "xla"])
def test_device_that_does_not_exist(device):
    raises(DeviceError, repr(device) if not isinstance(device, str) else device, call=lambda: resolve_device(device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda(tiny):
    raises(DeviceError, "'cuda'", "CUDA is not available", call=lambda: Llava.from_pretrained(tiny, device="cuda"))
    raises(DeviceError, "'cuda:1'", call=lambda: minillava.load(tiny, device="cuda:1"))


def test_cuda_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    raises(DeviceError, "Tesla T4", "bfloat16", "float16",
           call=lambda: resolve_dtype("bfloat16", torch.device("cuda"), None))
    raises(DeviceError, "Tesla T4", call=lambda: resolve_dtype(None, torch.device("cuda"), "bfloat16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_only_where_unsupported(tiny):
    if torch.cuda.is_bf16_supported():
        assert Llava.from_pretrained(tiny, device="cuda", dtype="bfloat16").dtype == torch.bfloat16
    else:
        raises(DeviceError, "bfloat16", call=lambda: Llava.from_pretrained(tiny, device="cuda", dtype="bfloat16"))


# ---- tokenizer and processor files -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proc_src(tmp_path_factory):
    return write_processor_files(tmp_path_factory.mktemp("proc") / "src", config=True)


@pytest.fixture
def proc(proc_src, tmp_path):
    return Path(shutil.copytree(proc_src, tmp_path / "proc"))


def test_tokenizer_files(proc):
    tok = (proc / "tokenizer.json").read_text()
    (proc / "tokenizer.json").unlink()
    raises(TokenizerError, proc / "tokenizer.json", "not found", call=lambda: Processor.from_pretrained(proc))
    for corrupt in [tok[: len(tok) // 2], "", "[]", '{"version": "1.0"}']:
        (proc / "tokenizer.json").write_text(corrupt)
        raises(TokenizerError, proc / "tokenizer.json", "not a valid", call=lambda: Processor.from_pretrained(proc))
    d = json.loads(tok)
    d["added_tokens"] = [t for t in d["added_tokens"] if t["content"] != "<image>"]
    (proc / "tokenizer.json").write_text(json.dumps(d))
    raises(TokenizerError, "tokenizer.json", "'<image>'", call=lambda: Processor.from_pretrained(proc))
    (proc / "tokenizer.json").write_text(tok)
    assert Processor.from_pretrained(proc).image_token_id == 32000


def test_tokenizer_disagreeing_with_the_model(proc, tiny):
    (proc / "config.json").write_text(json.dumps({**minimal_config(), "image_token_index": 32001}))
    raises(TokenizerError, "'<image>' is id 32000", "image_token_index is 32001",
           call=lambda: Processor.from_pretrained(proc))
    # a 32002-token tokenizer next to a 64-token model: ids would fall outside the embedding matrix
    cfg = LlavaConfig.from_json(tiny)
    cfg.image_token_index = 32000
    raises(TokenizerError, "32002 tokens", "vocab_size 64", call=lambda: Processor.from_pretrained(proc, config=cfg))
    processor_config = json.loads((proc / "processor_config.json").read_text())
    (proc / "config.json").write_text(json.dumps(minimal_config()))
    (proc / "processor_config.json").write_text(json.dumps({**processor_config, "patch_size": 7}))
    raises(TokenizerError, "processor_config.json", "patch_size 7", "14", call=lambda: Processor.from_pretrained(proc))


@pytest.mark.parametrize("name", ["preprocessor_config.json", "processor_config.json", "chat_template.json",
                                  "tokenizer_config.json", "special_tokens_map.json", "config.json"])
@pytest.mark.parametrize("content", ['{"size": ', "\xff\xfe", "[1, 2]", "42"])
def test_corrupt_processor_json_files(proc, name, content):
    if name == "special_tokens_map.json":  # read only when tokenizer_config.json has no added_tokens_decoder
        tok_config = json.loads((proc / "tokenizer_config.json").read_text())
        del tok_config["added_tokens_decoder"]
        (proc / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (proc / name).write_bytes(content.encode("latin-1"))
    raises(ConfigError, proc / name, call=lambda: Processor.from_pretrained(proc))


@pytest.mark.parametrize("file,key,value", [
    ("preprocessor_config.json", "size", "big"), ("preprocessor_config.json", "size", {"shortest_edge": 0}),
    ("preprocessor_config.json", "crop_size", {"height": 336}), ("preprocessor_config.json", "crop_size", 336),
    ("preprocessor_config.json", "image_std", [0.2, 0, 0.2]), ("preprocessor_config.json", "image_mean", [0.5]),
    ("preprocessor_config.json", "rescale_factor", "1/255"), ("preprocessor_config.json", "resample", 9),
    ("processor_config.json", "patch_size", "14"), ("processor_config.json", "num_additional_image_tokens", -1),
    ("processor_config.json", "image_token", 32000), ("processor_config.json", "vision_feature_select_strategy", "x"),
    ("tokenizer_config.json", "pad_token", 32001)])
def test_processor_settings_of_the_wrong_kind(proc, file, key, value):
    d = json.loads((proc / file).read_text())
    (proc / file).write_text(json.dumps({**d, key: value}))
    raises(TokenizerError if file == "tokenizer_config.json" else ConfigError, file, key, repr(value),
           call=lambda: Processor.from_pretrained(proc))


def test_processor_folder_missing(tmp_path):
    raises(TokenizerError, tmp_path / "nowhere", "not a folder",
           call=lambda: Processor.from_pretrained(tmp_path / "nowhere"))


# ---- images ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def processor(proc_src):
    return Processor.from_pretrained(proc_src)


def photo(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1).astype(np.uint8)


def save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_unreadable_image_files(processor, tmp_path):
    jpeg = save(Image.fromarray(photo(200, 300)), tmp_path / "photo.jpg", quality=90).read_bytes()
    files = {"missing.png": None, "empty.png": b"", "garbage.jpg": b"\x89PNG\r\n\x1a\n not really" * 20,
             "truncated.jpg": jpeg[: len(jpeg) // 3], "header-only.jpg": jpeg[:200], "text.png": b"hello world\n"}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        msg = raises(ImageError, "image 1", name, call=lambda: processor.preprocess([photo(), str(tmp_path / name)]))
        assert ("not found" if content is None else "cannot be read") in msg
    raises(ImageError, "image 0", "empty image", call=lambda: processor.preprocess([Image.new("RGB", (0, 7))]))
    raises(ImageError, "image 0", "empty image", call=lambda: processor.preprocess([np.zeros((0, 4, 3), np.uint8)]))
    raises(ImageError, "image 0", "NoneType", call=lambda: processor.preprocess([None]))
    raises(ImageError, "image 0", "uint16", call=lambda: processor.preprocess([photo().astype(np.uint16)]))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused(processor, tmp_path, monkeypatch):
    # a PNG header that claims 100000 x 100000 pixels: refused from the header alone, before any decoding
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)  # width, height, 8-bit RGB
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    raises(ImageError, "bomb.png", "too many pixels", call=lambda: processor.preprocess([tmp_path / "bomb.png"]))
    # PIL only warns between 1 and 2 x MAX_IMAGE_PIXELS; minillava refuses from 1 x
    save(Image.fromarray(photo(40, 60)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 60 - 1)
    raises(ImageError, "big.png", "60x40", "too many pixels", call=lambda: processor.preprocess([tmp_path / "big.png"]))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 60)
    assert processor.preprocess([tmp_path / "big.png"]).shape == (1, 3, 336, 336)


_hf = {}


def hf_pixels(proc_src, image):
    """transformers' pixel_values for one image (a path is opened with transformers' own load_image)."""
    from transformers import AutoProcessor
    from transformers.image_utils import load_image as hf_load_image
    if proc_src not in _hf:
        _hf[proc_src] = AutoProcessor.from_pretrained(proc_src, backend="pil")
    image = hf_load_image(image) if isinstance(image, str) else image
    return _hf[proc_src](text="<image>", images=[image], return_tensors="pt")["pixel_values"]


def test_unusual_but_valid_images(processor, proc_src, tmp_path):
    rgb = photo()
    # 16-bit grayscale: scaled to 8 bits (PIL's convert, and so transformers, clips it white)
    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    save(Image.fromarray(gray16), tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as img:
        assert img.mode == "I;16"
        for image in (tmp_path / "gray16.png", img):
            x = load_image(image)
            assert x.dtype == np.uint8 and x.shape == (40, 60, 3) and (x == rgb[..., :1]).all()
    # CMYK, grayscale, palette + transparency, as transformers makes them (files and PIL images)
    cases = {"cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "gray.png": Image.fromarray(rgb).convert("L"),
             "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)}
    cases["palette.png"].info["transparency"] = 3
    for name, img in cases.items():
        save(img, tmp_path / name)
        for image in (img, str(tmp_path / name)):
            got = processor.preprocess([image])
            assert got.shape == (1, 3, 336, 336) and got.isfinite().all() and got.std() > 0.1
            assert torch.equal(got, hf_pixels(proc_src, image)), name
    gray = load_image(tmp_path / "gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # an animated GIF: the first frame
    frames = [Image.new("RGB", (30, 20), c) for c in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as anim:
        assert anim.is_animated and anim.n_frames == 3
        anim.seek(2)
        for image in (tmp_path / "anim.gif", anim):
            x = load_image(image)
            assert x.shape == (20, 30, 3) and abs(int(x[..., 0].mean()) - 200) < 8 and x[..., 2].mean() < 20


# ---- prompts and generation --------------------------------------------------------------------------------

def test_image_markers_and_images_must_agree(processor):
    raises(PromptError, "2 <image> marker", "1 image", call=lambda: processor("<image><image> hi", [photo()]))
    raises(PromptError, "0 <image> marker", "1 image", call=lambda: processor("hi", [photo()]))
    raises(PromptError, "1 <image> marker", "0 image", call=lambda: processor("<image> hi"))
    raises(PromptError, "text", call=lambda: processor([]))
    raises(PromptError, "text", call=lambda: processor(["a", 3]))


def test_model_inputs(model):
    ids = torch.tensor([[1, 5, IMAGE_ID, 7]])
    raises(PromptError, "1 image tokens", "no pixel_values", call=lambda: model(ids))
    pv = torch.zeros(1, 3, 28, 28)
    raises(PromptError, "1 image tokens", "2 image(s)", call=lambda: model(ids, torch.cat([pv, pv])))
    raises(ImageError, "(1, 3, 336, 336)", "(n_images, 3, 28, 28)", call=lambda: model(ids, torch.zeros(1, 3, 336, 336)))
    raises(ImageError, "(1, 4, 28, 28)", call=lambda: model(ids, torch.zeros(1, 4, 28, 28)))
    raises(PromptError, "outside the vocabulary", "max 64", call=lambda: model(torch.tensor([[1, 64]])))
    raises(PromptError, "outside the vocabulary", "min -1", call=lambda: model(torch.tensor([[-1, 2]])))
    raises(PromptError, "input_ids", "list", call=lambda: model([[1, 2]]))
    raises(PromptError, "input_ids", "torch.float32", call=lambda: model(torch.ones(1, 2)))
    raises(PromptError, "input_ids", "(3,)", call=lambda: model(torch.tensor([1, 2, 3])))


@pytest.mark.parametrize("kw,culprit", [
    (dict(max_new_tokens=0), "max_new_tokens = 0"), (dict(max_new_tokens=-3), "max_new_tokens = -3"),
    (dict(max_new_tokens=2.0), "max_new_tokens = 2.0"), (dict(max_new_tokens=True), "max_new_tokens = True"),
    (dict(temperature=-0.1), "temperature = -0.1"), (dict(temperature=float("nan")), "temperature = nan"),
    (dict(temperature="hot"), "temperature = 'hot'"),
    (dict(top_p=0), "top_p = 0"), (dict(top_p=1.5), "top_p = 1.5"), (dict(top_p=-0.2), "top_p = -0.2"),
    (dict(top_p=float("nan")), "top_p = nan"), (dict(top_k=-1), "top_k = -1"), (dict(top_k=2.5), "top_k = 2.5"),
    (dict(eos_token_id="</s>"), "eos_token_id = '</s>'"), (dict(eos_token_id=[2, None]), "eos_token_id = [2, None]")])
def test_generation_settings(model, kw, culprit):
    raises(GenerationError, culprit, call=lambda: generate(model, torch.tensor([[1, 2, 3]]), **kw))


def test_prompts_generate_cannot_run(model, processor):
    raises(PromptError, "60 tokens", "max_new_tokens 10", "context length 64",
           call=lambda: generate(model, torch.ones(1, 60, dtype=torch.long), max_new_tokens=10))
    raises(PromptError, "non-empty", "(1, 0)", call=lambda: generate(model, torch.ones(1, 0, dtype=torch.long)))
    raises(PromptError, "non-empty", "list", call=lambda: generate(model, [[1, 2]]))
    raises(PromptError, "non-empty", call=lambda: model(torch.ones(1, 0, dtype=torch.long)))
    raises(PromptError, "attention_mask", "(1, 2)", "(1, 3)",
           call=lambda: generate(model, torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2)))
    raises(PromptError, "outside the vocabulary", call=lambda: generate(model, torch.tensor([[1, 99]])))
    # an empty string is a valid prompt for the processor (BOS alone, as in transformers); it is not empty
    assert processor("")["input_ids"].tolist() == [[1]]
    assert generate(model, torch.tensor([[1]]), max_new_tokens=2).shape[1] in (1, 2)


# ---- property tests: random files never escape as anything but a MinillavaError ----------------------------

def load_or_minillava_error(folder):
    try:
        Llava.from_pretrained(folder)
    except MinillavaError:
        pass  # any other exception type fails the test


@pytest.fixture(scope="module")
def fuzz_folder(tiny, tmp_path_factory):
    """A folder whose files the property tests overwrite, one per test."""
    root, made = tmp_path_factory.mktemp("fuzz"), {}

    def make(name):
        if name not in made:
            made[name] = Path(shutil.copytree(tiny, root / name))
        return made[name]
    return make


@pytest.fixture(scope="module")
def tiny_file(tiny):
    """The valid model.safetensors: (bytes, parsed header)."""
    data = (tiny / "model.safetensors").read_bytes()
    return data, json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])


def mutate_bytes(draw, data, lo=0, hi=None):
    """Flip, insert or delete a few bytes of data[lo:hi]."""
    data = bytearray(data)
    hi = len(data) if hi is None else hi
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(lo, max(lo, min(hi, len(data)) - 1)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "insert" or not data:
            data.insert(i, draw(st.integers(0, 255)))
        elif op == "delete":
            del data[min(i, len(data) - 1)]
        elif op == "flip":
            data[min(i, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        else:
            data[min(i, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() |
                           st.text(max_size=8) | st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 64]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=4)
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3",
          "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "f32", "", "F32 "]


def mutated_safetensors(draw, data, header):
    """A damaged copy of a valid safetensors file: random bytes, a bad length prefix, damaged header bytes, a header
    with changed dtypes / shapes / data_offsets / keys (length prefix kept consistent), a truncated or extended file."""
    n = struct.unpack("<Q", data[:8])[0]
    kind = draw(st.sampled_from(["random", "prefix", "header bytes", "header json", "truncate", "append"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "prefix":
        if draw(st.booleans()):
            return struct.pack("<Q", draw(st.integers(0, 2 ** 64 - 1))) + data[8:]
        return mutate_bytes(draw, data, 0, 8)
    if kind == "header bytes":
        return mutate_bytes(draw, data, 8, 8 + n)
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    h = json.loads(json.dumps(header))
    keys = [k for k in h if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "value", "delete", "rename", "field"]))
        if not isinstance(h.get(key), dict):  # deleted or replaced by an earlier mutation
            continue
        if field == "dtype":
            h[key]["dtype"] = draw(st.sampled_from(DTYPES))
        elif field == "shape":
            h[key]["shape"] = draw(st.lists(st.integers(-2, 2 ** 65), max_size=4) | JSON_VALUES)
        elif field == "data_offsets":
            end = len(data) - 8 - n
            h[key]["data_offsets"] = draw(st.lists(st.integers(-1, end + 10) | st.integers(0, 2 ** 64), min_size=0,
                                                   max_size=3) | JSON_VALUES)
        elif field == "value":
            h[key] = draw(JSON_VALUES)
        elif field == "delete":
            del h[key]
        elif field == "rename":
            h[draw(st.text(max_size=40))] = h.pop(key)
        else:
            h[key][draw(st.text(max_size=6))] = draw(JSON_VALUES)
    body = json.dumps(h).encode()
    return struct.pack("<Q", len(body)) + body + data[8 + n:]


@settings(max_examples=1400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_safetensors_files(fuzz_folder, tiny_file, data):
    folder = fuzz_folder("safetensors")
    (folder / "model.safetensors").write_bytes(mutated_safetensors(data.draw, *tiny_file))
    load_or_minillava_error(folder)


def mutated_config(draw, cfg):
    """config.json text with damaged bytes, or with a few fields (top level, text or vision) deleted or set to values
    of random types: sizes near 0 and near 2**31 / 2**64, strings, floats (NaN, inf), lists, objects."""
    if draw(st.integers(0, 9)) == 0:  # byte-level damage to the JSON text
        return mutate_bytes(draw, json.dumps(cfg).encode())
    cfg = json.loads(json.dumps(cfg))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from([None, "text_config", "vision_config"]))
        d = cfg if where is None or not isinstance(cfg.get(where), dict) else cfg[where]
        key = draw(st.sampled_from(sorted(d) + ["image_token_id", "rope_parameters", "rope_scaling", "head_dim",
                                                "num_key_value_heads", "sliding_window", "dtype", "model_type"]))
        if draw(st.integers(0, 5)) == 0:
            d.pop(key, None)
        elif isinstance(d.get(key), int) and not isinstance(d.get(key), bool) and draw(st.booleans()):
            d[key] = draw(st.sampled_from([0, -1, 1, 2, 3, 2 ** 31, 2 ** 64, 10 ** 30])) + draw(st.integers(-2, 2))
        else:
            d[key] = draw(JSON_VALUES)
    return json.dumps(cfg, allow_nan=True).encode()


@settings(max_examples=650, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_config_json(fuzz_folder, tiny, data):
    folder = fuzz_folder("config")
    (folder / "config.json").write_bytes(mutated_config(data.draw, json.loads((tiny / "config.json").read_text())))
    try:
        LlavaConfig.from_json(folder / "config.json")
    except MinillavaError:
        return
    load_or_minillava_error(folder)  # a config that parses must still build and load, or fail cleanly
