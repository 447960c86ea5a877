"""Configs for LLaVA-1.5: three dataclasses with the Hugging Face field names.

`LlavaConfig.from_dict(json.load(...))` applies exactly the defaults transformers 5 applies when a
field is missing. That matters: the real llava-1.5-7b-hf `config.json` leaves hidden size, layer and
head counts and rope theta to the Llama defaults (its text_config holds little more than
`model_type`, `max_position_embeddings`, `rms_norm_eps`, `vocab_size`). No table of model names anywhere.
Matches `LlavaConfig`, `LlamaConfig`, `MistralConfig` and `CLIPVisionConfig` in transformers 5.23.
"""
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

# text_config.hidden_act values the decoder implements (llama.ACTIVATIONS)
TEXT_ACTIVATIONS = ("silu", "gelu", "relu", "gelu_pytorch_tanh")
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
          "fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}


@dataclass
class VisionConfig:  # CLIPVisionConfig
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    model_type: str = "clip_vision_model"

    @property
    def num_patches(self):  # 24 x 24 = 576 for CLIP-L/14 at 336 px
        return (self.image_size // self.patch_size) ** 2


# What LlavaConfig passes to CLIPVisionConfig when `vision_config` is absent altogether (CLIP-L/14-336).
# A `vision_config` dict that is present falls back to the plain CLIPVisionConfig defaults above.
LLAVA_VISION_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                             num_attention_heads=16, image_size=336, patch_size=14)


@dataclass
class TextConfig:  # LlamaConfig / MistralConfig
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads (plain multi-head attention)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral: a token sees at most this many keys, itself included
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    pad_token_id: int | None = None


# MistralConfig differs from LlamaConfig only in these defaults.
MISTRAL_DEFAULTS = dict(intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                        sliding_window=4096)


@dataclass
class LlavaConfig:
    vision_config: VisionConfig = field(default_factory=lambda: VisionConfig(**LLAVA_VISION_DEFAULTS))
    text_config: TextConfig = field(default_factory=TextConfig)
    image_token_index: int = 32000
    image_seq_length: int = 576  # kept as transformers keeps it; read by neither (the processor counts)
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: str = "default"  # "default" drops the CLS token, "full" keeps it
    vision_feature_layer: int | list = -2  # index into the tower's hidden_states tuple (0 = embeddings)
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    dtype: str | None = None  # the dtype the checkpoint was saved in ("torch_dtype" in older files)

    @property
    def feature_layers(self):
        """`vision_feature_layer` as a list of non-negative indices into hidden_states."""
        layers = self.vision_feature_layer
        if not isinstance(layers, list):
            layers = [layers]
        n = self.vision_config.num_hidden_layers + 1  # hidden_states has one entry per layer plus the embeddings
        return [i % n for i in layers]

    @classmethod
    def from_dict(cls, d, source="config.json"):
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type != "llava":
            raise ConfigError(f"{source}: model_type is {model_type!r}; minillava runs LLaVA-1.5 checkpoints "
                              f"(model_type 'llava', LlavaForConditionalGeneration) only")
        if "mm_vision_tower" in d and "text_config" not in d:
            raise ConfigError(f"{source}: this is an original liuhaotian LLaVA config (mm_vision_tower="
                              f"{d['mm_vision_tower']!r}); load it with minillava.original")
        top = {k: v for k, v in d.items() if k in _names(cls) and k not in ("vision_config", "text_config")}
        if "image_token_id" in d and "image_token_index" not in d:
            top["image_token_index"] = d["image_token_id"]
        top["dtype"] = d.get("dtype", d.get("torch_dtype"))
        vision = _vision_from_dict(d.get("vision_config"), source)
        text = _text_from_dict(d.get("text_config"), source)
        # as transformers' LlavaConfig.__post_init__: a tied text config ties the whole model
        top["tie_word_embeddings"] = top.get("tie_word_embeddings") or text.tie_word_embeddings  # type checked below
        cfg = cls(vision_config=vision, text_config=text, **top)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: file not found (a llava-hf checkpoint folder has a config.json)")
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self):
        return dataclasses.asdict(self)

    def validate(self, source="config.json"):
        v, t = self.vision_config, self.text_config
        _check_types(v, f"{source}: vision_config")
        _check_types(t, f"{source}: text_config")
        _check_types(self, source, skip=("vision_config", "text_config", "vision_feature_layer"))
        for obj, where, names in [(v, "vision_config", ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                        "num_attention_heads", "num_channels", "image_size",
                                                        "patch_size")),
                                  (t, "text_config", ("vocab_size", "hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                      "head_dim", "max_position_embeddings"))]:
            for n in names:
                if getattr(obj, n) <= 0:
                    raise ConfigError(f"{source}: {where}.{n} = {getattr(obj, n)}, expected a positive integer")
        if v.hidden_size % v.num_attention_heads:
            raise ConfigError(f"{source}: vision_config.hidden_size {v.hidden_size} is not divisible by "
                              f"num_attention_heads {v.num_attention_heads}")
        if v.image_size % v.patch_size:
            raise ConfigError(f"{source}: vision_config.image_size {v.image_size} is not a multiple of patch_size "
                              f"{v.patch_size}")
        if t.num_attention_heads % t.num_key_value_heads:
            raise ConfigError(f"{source}: text_config.num_attention_heads {t.num_attention_heads} is not divisible by "
                              f"num_key_value_heads {t.num_key_value_heads}")
        if t.head_dim % 2:
            raise ConfigError(f"{source}: text_config.head_dim {t.head_dim} must be even for rotary embeddings")
        for where, name, x in [("text_config", "rms_norm_eps", t.rms_norm_eps),
                               ("text_config", "rope_theta", t.rope_theta),
                               ("vision_config", "layer_norm_eps", v.layer_norm_eps)]:
            if not _positive_finite(x):
                raise ConfigError(f"{source}: {where}.{name} = {x!r}, expected a positive finite number")
        if t.sliding_window is not None and t.sliding_window <= 0:
            raise ConfigError(f"{source}: text_config.sliding_window = {t.sliding_window}, expected a positive integer "
                              f"or null")
        if t.hidden_act not in TEXT_ACTIVATIONS:
            raise ConfigError(f"{source}: text_config.hidden_act {t.hidden_act!r} is not supported (expected one of "
                              f"{TEXT_ACTIVATIONS})")
        if v.hidden_act not in ("quick_gelu", "gelu"):
            raise ConfigError(f"{source}: vision_config.hidden_act {v.hidden_act!r} is not supported "
                              f"(expected 'quick_gelu')")
        if self.projector_hidden_act != "gelu":
            raise ConfigError(f"{source}: projector_hidden_act {self.projector_hidden_act!r} is not supported "
                              f"(expected 'gelu')")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ConfigError(f"{source}: vision_feature_select_strategy {self.vision_feature_select_strategy!r}, "
                              f"expected 'default' or 'full'")
        layers = self.vision_feature_layer
        if not isinstance(layers, list):
            layers = [layers]
        n = v.num_hidden_layers + 1
        if not layers or not all(type(i) is int and -n <= i < n for i in layers):
            raise ConfigError(f"{source}: vision_feature_layer {self.vision_feature_layer!r}, expected an int or a "
                              f"non-empty list of ints in [-{n}, {n - 1}] (the tower has {v.num_hidden_layers} layers)")
        if not 0 <= self.image_token_index < t.vocab_size:
            raise ConfigError(f"{source}: image_token_index {self.image_token_index} is outside the vocabulary "
                              f"(text_config.vocab_size {t.vocab_size})")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"{source}: dtype {self.dtype!r} is not one of float32, float16, bfloat16")


def read_json(path):
    """The JSON object in a file; ConfigError naming the file when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (not UTF-8 text: {e})") from None
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, or a number of more than 4300 digits
        raise ConfigError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _positive_finite(x):
    try:
        return 0 < float(x) < math.inf  # False for NaN
    except OverflowError:  # an int beyond the float range
        return False


def _names(cls):
    return {f.name for f in dataclasses.fields(cls)}


def _vision_from_dict(d, source):
    if d is None:
        return VisionConfig(**LLAVA_VISION_DEFAULTS)
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: vision_config must be a JSON object, got {type(d).__name__}")
    mt = d.get("model_type", "clip_vision_model")
    if mt != "clip_vision_model":
        raise ConfigError(f"{source}: vision_config.model_type {mt!r} is not supported (expected 'clip_vision_model')")
    return VisionConfig(**{k: v for k, v in d.items() if k in _names(VisionConfig)})


def _text_from_dict(d, source):
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: text_config must be a JSON object, got {type(d).__name__}")
    mt = d.get("model_type", "llama")
    if mt not in ("llama", "mistral"):
        raise ConfigError(f"{source}: text_config.model_type {mt!r} is not supported (expected 'llama' or 'mistral')")
    kw = dict(MISTRAL_DEFAULTS) if mt == "mistral" else {}
    kw.update({k: v for k, v in d.items() if k in _names(TextConfig) and k != "rope_theta"})
    # transformers <5 wrote rope_theta (+ rope_scaling); 5.x writes rope_parameters {rope_theta, rope_type}
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: text_config.rope_parameters must be a JSON object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: text_config rope_type {rope_type!r} is not supported (only 'default' RoPE)")
    kw["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    if mt == "mistral":  # MistralConfig has attention_bias / mlp_bias None, i.e. no biases
        kw["attention_bias"] = kw.get("attention_bias") or False
        kw["mlp_bias"] = kw.get("mlp_bias") or False
    t = TextConfig(**kw)
    if t.num_key_value_heads is None:
        t.num_key_value_heads = t.num_attention_heads
    heads = t.num_attention_heads
    if t.head_dim is None and type(t.hidden_size) is int and type(heads) is int and heads > 0:
        t.head_dim = t.hidden_size // t.num_attention_heads
    return t


def _check_types(obj, where, skip=()):
    """Reject e.g. `"num_hidden_layers": "32"` or `true` with a message, instead of a TypeError deep in torch."""
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        val, ann = getattr(obj, f.name), getattr(f.type, "__name__", str(f.type))  # "int", "int | None"
        ok = {"int": lambda x: type(x) is int,
              "float": lambda x: type(x) in (int, float),
              "str": lambda x: isinstance(x, str),
              "bool": lambda x: isinstance(x, bool)}
        kinds = [k for k in ("int", "float", "str", "bool") if k in ann.replace("list", "")]
        if val is None and "None" in ann:
            continue
        if "list" in ann and isinstance(val, list) and all(type(x) is int for x in val):
            continue
        if not any(ok[k](val) for k in kinds):
            raise ConfigError(f"{where}.{f.name} = {val!r} has the wrong type, expected {ann}")
