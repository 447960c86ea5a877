"""Tokenizer and processor files: missing, corrupt or disagreeing files raise a TokenizerError or ConfigError
naming the file and the field.
"""
import json

import pytest

from minillava import (
    ConfigError,
    LlavaConfig,
    Processor,
    TokenizerError,
)
from tests.helpers.mistakes import raises
from tests.helpers.tokenizer_files import minimal_config

# ---- tokenizer and processor files -------------------------------------------------------------------------

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
    tok_config = (proc / "tokenizer_config.json").read_text()
    c = json.loads(tok_config)  # tokenizer_config.json declares it too: it would be added back
    c["added_tokens_decoder"] = {i: t for i, t in c["added_tokens_decoder"].items() if t["content"] != "<image>"}
    (proc / "tokenizer_config.json").write_text(json.dumps(c))
    raises(TokenizerError, "tokenizer.json", "no '<image>' token", call=lambda: Processor.from_pretrained(proc))
    (proc / "tokenizer.json").write_text(tok)
    (proc / "tokenizer_config.json").write_text(tok_config)
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
    ("preprocessor_config.json", "crop_size", {"height": 336}), ("preprocessor_config.json", "crop_size", "336"),
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


@pytest.mark.parametrize("file,value", [("tokenizer_config.json", [1, 2]), ("tokenizer_config.json", {"5": "<x>"}),
                                        ("tokenizer_config.json", {"5": {"content": 5}}),
                                        ("added_tokens.json", {"<x>": [5]})])
def test_added_tokens_of_the_wrong_kind(proc, file, value):
    tok_config = json.loads((proc / "tokenizer_config.json").read_text())
    if file == "added_tokens.json":  # read only when tokenizer_config.json has no added_tokens_decoder
        del tok_config["added_tokens_decoder"]
        (proc / file).write_text(json.dumps(value))
    else:
        tok_config["added_tokens_decoder"] = value
    (proc / "tokenizer_config.json").write_text(json.dumps(tok_config))
    raises(TokenizerError, file, "added_tokens_decoder" if file == "tokenizer_config.json" else "'<x>'",
           call=lambda: Processor.from_pretrained(proc))
