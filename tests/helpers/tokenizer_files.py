"""Write the processor and tokenizer files of a llava-hf checkpoint into a folder, as the hub has them.

`write_processor_files(folder)` produces what `llava-hf/llava-1.5-7b-hf` ships next to its weights
: `tokenizer.json` (a real Llama-2 or Mistral vocabulary from tests/fixtures plus
the added tokens `<image>` and `<pad>`), `tokenizer_config.json`, `special_tokens_map.json`,
`added_tokens.json`, `preprocessor_config.json`, `processor_config.json` and the chat template.
`transformers.AutoProcessor` needs a `config.json` (model_type llava) beside them to pick the llava
code path; pass `config=True` for a minimal one, or a dict to write your own.
"""
import json
from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"
TOKENIZERS = {"llama2": FIXTURES / "llama2-tokenizer" / "tokenizer.json",
              "mistral": FIXTURES / "mistral-tokenizer" / "tokenizer.json"}

# chat_template.json of llava-hf/llava-1.5-7b-hf
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _added(content, special=True):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def write_processor_files(folder, tokenizer="llama2", legacy=False, image_size=336, patch_size=14,
                          strategy="default", processor_config=True, chat_template="json",
                          image_token_index=32000, padding_side="left", config=None):
    """Write llava-hf processor files into `folder` (created if needed) and return its Path.

    tokenizer: "llama2" (llava-1.5) or "mistral" (bakLlava). legacy: the tokenizer_config flag
    (AutoProcessor ignores it on a llava folder). chat_template: "json"
    (chat_template.json, as the hub has it), "jinja" (chat_template.jinja, as transformers 5 saves it),
    "tokenizer_config" (inside tokenizer_config.json) or None. image_token_index: 32000 (llava-hf) or
    32001 (then `<pad>` is 32000). padding_side: written into tokenizer_config.json unless None.
    config: None (no config.json), True (a minimal llava config.json matching the arguments) or a dict
    written as config.json verbatim.
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer {tokenizer!r}, expected one of {sorted(TOKENIZERS)}")
    if image_token_index not in (32000, 32001):
        raise ValueError(f"image_token_index {image_token_index}: the tokenizers library numbers added tokens "
                         f"consecutively after the 32000-token vocabulary, so only 32000 or 32001 can be written")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pad_index = 32001 if image_token_index == 32000 else 32000
    added = sorted([(image_token_index, "<image>"), (pad_index, "<pad>")])

    tok = json.loads(TOKENIZERS[tokenizer].read_text(encoding="utf-8"))
    tok["added_tokens"] += [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, c in added]
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")

    _write(folder / "added_tokens.json", {c: i for i, c in added})
    special = {name: _added(content) for name, content in
               [("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>")]}
    for d in special.values():
        d.pop("special")
    _write(folder / "special_tokens_map.json", special)

    tok_config = {  # llava-hf keeps Vicuna's tokenizer_config, plus the two added tokens and pad
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added(c) for i, c in [(0, "<unk>"), (1, "<s>"), (2, "</s>")] + added},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": legacy,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    if padding_side is not None:
        tok_config["padding_side"] = padding_side
    if chat_template == "tokenizer_config":
        tok_config["chat_template"] = CHAT_TEMPLATE
    _write(folder / "tokenizer_config.json", tok_config)

    _write(folder / "preprocessor_config.json", {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD,
        "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": image_size},
    })
    if processor_config:
        _write(folder / "processor_config.json", {
            "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": patch_size,
            "processor_class": "LlavaProcessor", "vision_feature_select_strategy": strategy,
        })
    if chat_template == "json":
        _write(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    elif chat_template == "jinja":
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    elif chat_template not in (None, "tokenizer_config"):
        raise ValueError(f"chat_template {chat_template!r}, expected 'json', 'jinja', 'tokenizer_config' or None")

    if config is True:
        config = minimal_config(image_size, patch_size, strategy, image_token_index, pad_index)
    if config is not None:
        _write(folder / "config.json", config)
    return folder


def minimal_config(image_size=336, patch_size=14, strategy="default", image_token_index=32000, pad_token_id=32001):
    """A small llava config.json: enough for AutoProcessor / AutoConfig, not meant to build a model from."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": image_token_index,
        "model_type": "llava",
        "pad_token_id": pad_token_id,
        "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 64, "intermediate_size": 128,
                        "num_hidden_layers": 2, "num_attention_heads": 4},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": image_size,
                          "patch_size": patch_size},
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": strategy,
        "vocab_size": 32064,
    }


def _write(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
