"""Property tests: random bytes and random mutations of a valid safetensors file and config.json reach the loader,
and nothing but a MinillavaError ever comes out.
"""
import json
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillava import (
    LlavaConfig,
    MinillavaError,
    load_model,
)

# ---- property tests: random files never escape as anything but a MinillavaError ----------------------------

def load_or_minillava_error(folder):
    try:
        load_model(folder)
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
                           lambda inner: (st.lists(inner, max_size=3)
                                          | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
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
