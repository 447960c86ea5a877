"""config.json: every mistake in it raises a ConfigError naming the field (or a CheckpointError where the
files and the config disagree); the exception types themselves.
"""

import pytest

import minillava
from minillava import ConfigError, LlavaConfig, load_model
from tests.helpers.mistakes import edit_config, raises

# ---- the exception types -----------------------------------------------------------------------------------

def test_every_exception_is_exported_and_derives_from_minillava_error():
    import minillava.errors as errors
    defined = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, Exception)}
    assert defined == {"MinillavaError", "ConfigError", "CheckpointError", "TokenizerError", "ImageError",
                       "PromptError", "GenerationError", "DeviceError", "CompareError", "TrainingError"}
    for name in defined:
        assert getattr(minillava, name) is getattr(errors, name) and name in minillava.__all__
        assert issubclass(getattr(errors, name), errors.MinillavaError)


# ---- checkpoint folders: config.json -----------------------------------------------------------------------

def test_missing_and_invalid_config(ckpt):
    (ckpt / "config.json").unlink()
    raises(ConfigError, ckpt / "config.json", "not found", call=lambda: load_model(ckpt))
    for text in ['{"model_type": "llava",', "\xff\xfe", "[1, 2]", "1" * 5000, "[" * 100000]:
        (ckpt / "config.json").write_bytes(text.encode("latin-1"))
        raises(ConfigError, ckpt / "config.json", call=lambda: load_model(ckpt))


@pytest.mark.parametrize("where,key,value", [
    ("text_config", "num_hidden_layers", "32"), ("text_config", "num_hidden_layers", True),
    ("text_config", "num_hidden_layers", 3.5), ("text_config", "num_hidden_layers", None),
    ("vision_config", "hidden_size", None), ("text_config", "rms_norm_eps", "1e-6"),
    ("text_config", "vocab_size", [64]),
    (None, "image_token_index", "63"), (None, "vision_feature_layer", 1.0), (None, "tie_word_embeddings", "no"),
    (None, "text_config", [1]), (None, "vision_config", "clip")])
def test_config_field_of_the_wrong_type(ckpt, where, key, value):
    edit_config(ckpt, lambda c: (c[where] if where else c).__setitem__(key, value))
    raises(ConfigError, "config.json", key, call=lambda: load_model(ckpt))


@pytest.mark.parametrize("where,key,value,why", [
    ("vision_config", "num_attention_heads", 3, "not divisible"),  # 8 hidden / 3 heads
    ("text_config", "num_key_value_heads", 3, "not divisible"),  # 2 heads / 3 KV heads
    ("text_config", "num_hidden_layers", 0, "positive"), ("vision_config", "num_hidden_layers", 0, "positive"),
    ("text_config", "hidden_size", -16, "positive"), ("text_config", "vocab_size", -1, "positive"),
    ("vision_config", "patch_size", 5, "multiple"), ("text_config", "head_dim", 3, "even"),
    ("text_config", "rms_norm_eps", float("nan"), "positive finite"),
    ("text_config", "rope_theta", float("inf"), "finite"),
    ("text_config", "rms_norm_eps", 10 ** 400, "finite"), ("text_config", "sliding_window", 0, "positive"),
    ("text_config", "hidden_act", "tanh", "not supported"),
    (None, "vision_feature_layer", 2, "[-2, 1]"), (None, "vision_feature_layer", -3, "[-2, 1]"),
    (None, "vision_feature_layer", [], "non-empty"), (None, "image_token_index", 64, "outside the vocabulary"),
    (None, "image_token_index", -1, "outside the vocabulary"),
    (None, "vision_feature_select_strategy", "cls", "expected"),
    (None, "projector_hidden_act", "relu", "not supported"), (None, "torch_dtype", "int8", "dtype")])
def test_config_impossible_values(ckpt, where, key, value, why):
    edit_config(ckpt, lambda c: (c[where] if where else c).__setitem__(key, value))
    raises(ConfigError, "config.json", key if key != "torch_dtype" else "dtype", why,
           call=lambda: load_model(ckpt))


def test_config_sizes_no_model_can_have(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(vocab_size=2 ** 62, hidden_size=2 ** 62, num_attention_heads=2))
    raises(ConfigError, "config.json", call=lambda: load_model(ckpt))
    edit_config(ckpt, lambda c: c["text_config"].update(vocab_size=10 ** 30))
    raises(ConfigError, "config.json", call=lambda: load_model(ckpt))


@pytest.mark.parametrize("change,culprit", [
    (lambda c: c.update(model_type="llava_next"), "'llava_next'"),
    (lambda c: c.update(model_type="llava_onevision"), "'llava_onevision'"),
    (lambda c: c.clear() or c.update(model_type="llama", hidden_size=16, architectures=["LlamaForCausalLM"]),
     "'llama'"),
    (lambda c: c.pop("model_type"), "None"),
    (lambda c: c["text_config"].update(model_type="qwen2"), "'qwen2'"),
    (lambda c: c["vision_config"].update(model_type="siglip_vision_model"), "'siglip_vision_model'"),
    (lambda c: c["text_config"].update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "'llama3'"),
    (lambda c: c.update(mm_vision_tower="openai/clip", text_config=None) or c.pop("text_config"), "minillava.original"),
])
def test_unsupported_architectures(ckpt, change, culprit):
    edit_config(ckpt, change)
    raises(ConfigError, "config.json", culprit, call=lambda: load_model(ckpt))


def test_config_from_json_alone(tmp_path):
    raises(ConfigError, tmp_path / "config.json", call=lambda: LlavaConfig.from_json(tmp_path))
    (tmp_path / "config.json").write_text("null")
    raises(ConfigError, "config.json", "JSON object", call=lambda: LlavaConfig.from_json(tmp_path))
