"""The model against transformers' LlavaForConditionalGeneration on the same checkpoint files, fp32 CPU.

Every comparison goes through public outputs only: vision hidden states, projected image features,
logits. fp32 tolerance 1e-5 on logits of order 1-6 (in practice the difference is 0).
"""
import json

import pytest
import torch

from minillava import CheckpointError, GenerationError, ImageError, Llava, LlavaConfig, PromptError, load_model
from tests.helpers import checkpoints as C
from tests.helpers.mistakes import IMAGE_ID, raises

ATOL = 1e-5
NAMES = list(C.CONFIGS)


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {name: C.build(root / name, name, processor=False) for name in NAMES}
    out["sharded"] = C.build(root / "sharded", "gqa", shards=3, processor=False, seed=3)
    out["saved"] = C.build(root / "saved", "mistral", layout="saved", processor=False, seed=4)
    out["raw"] = C.build(root / "raw", "mha", layout="raw", processor=False, seed=5)
    return out


@pytest.fixture(scope="session")
def pair(folders):
    """(minillava model, transformers model) per folder, loaded once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = (load_model(folders[name]), C.reference(folders[name]))
        return cache[name]
    return get


def n_image_tokens(model):
    cfg = model.config
    return cfg.vision_config.num_patches + (cfg.vision_feature_select_strategy == "full")


def prompt(model, n_images=1, text_len=30, seed=0):
    """Random text ids with `n_images` runs of image tokens spread through them."""
    g = torch.Generator().manual_seed(seed)
    n = n_image_tokens(model)
    parts = [torch.tensor([1])]
    for i in range(n_images):
        parts += [torch.randint(3, 32000, (text_len // (n_images + 1),), generator=g), torch.full((n,), 32000)]
    parts.append(torch.randint(3, 32000, (text_len - len(torch.cat(parts)) + n * n_images + 1,), generator=g))
    return torch.cat(parts)[None], torch.randn(n_images, 3, 56, 56, generator=g) if n_images else None


@pytest.mark.parametrize("name", NAMES + ["sharded", "saved", "raw"])
@torch.no_grad()
def test_logits_with_image(pair, name):
    ours, ref = pair(name)
    ids, pv = prompt(ours, 1)
    want = ref(input_ids=ids, pixel_values=pv).logits
    got = ours(ids, pv)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert want.abs().max() > 1  # the comparison is meaningful: logits of order 1
    assert (got - want).abs().max() <= ATOL


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_vision_features_and_projector(pair, name):
    ours, ref = pair(name)
    pv = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(7))
    out = ref.model.vision_tower(pixel_values=pv, output_hidden_states=True)
    for layer in ours.config.feature_layers:  # the selected layer(s), straight from the tower
        got = ours.vision_tower(pv, [layer])[0]
        assert (got - out.hidden_states[layer]).abs().max() <= ATOL
    want = torch.stack(ref.get_image_features(pixel_values=pv, vision_feature_layer=ours.config.vision_feature_layer,
                                              vision_feature_select_strategy=ours.config.vision_feature_select_strategy).pooler_output)
    got = ours.image_features(pv)
    assert got.shape == want.shape == (2, n_image_tokens(ours), ours.config.text_config.hidden_size)
    assert (got - want).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["gqa", "multilayer"])
@torch.no_grad()
def test_every_module_on_its_own(pair, name):
    """The inner modules run on their own and give transformers' outputs: the CLIP encoder stack, the decoder
    stack (final norm included), the decoder with its LM head."""
    ours, ref = pair(name)
    pv = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(8))
    want = ref.model.vision_tower(pixel_values=pv, output_hidden_states=True).hidden_states
    got = ours.vision_tower.vision_model(pv)  # every layer: index 0 is the embeddings after pre_layrnorm
    assert len(got) == len(want) and max((g - w).abs().max() for g, w in zip(got, want)) <= ATOL
    embeds = torch.randn(1, 9, ours.config.text_config.hidden_size, generator=torch.Generator().manual_seed(9))
    want = ref.model.language_model(inputs_embeds=embeds).last_hidden_state
    assert (ours.language_model.model(embeds) - want).abs().max() <= ATOL
    assert (ours.language_model(embeds) - ref(inputs_embeds=embeds).logits).abs().max() <= ATOL


@torch.no_grad()
def test_stages_are_the_forward_pass_taken_apart(pair):
    ours, ref = pair("multilayer")
    ids, pv = prompt(ours, 1)
    stages = ours.stages(ids, pv, torch.ones_like(ids))
    layers = ours.config.feature_layers
    assert list(stages) == ["input_ids", "attention_mask", "pixel_values",
                            *[f"vision_hidden_states.{i}" for i in layers], "vision_features", "image_features",
                            "inputs_embeds", "logits"]
    assert torch.equal(stages["logits"], ours(ids, pv, attention_mask=torch.ones_like(ids)))
    assert torch.equal(stages["image_features"], ours.image_features(pv))
    assert (stages["logits"] - ref(input_ids=ids, pixel_values=pv).logits).abs().max() <= ATOL
    assert "pixel_values" not in ours.stages(prompt(ours, 0)[0])


def test_forward_takes_ids_or_embeddings_not_both(pair):
    ours, _ = pair("mha")
    ids, pv = prompt(ours, 1)
    embeds = ours.embed(ids, pv)
    with pytest.raises(PromptError, match="either input_ids .* or inputs_embeds"):
        ours(ids, inputs_embeds=embeds)  # transformers raises too; before, the embeddings silently won
    with pytest.raises(PromptError, match="either input_ids"):
        ours(inputs_embeds=embeds, pixel_values=pv)
    with pytest.raises(PromptError, match="either input_ids"):
        ours()


def test_a_full_cache_is_a_clear_error(pair):
    ours, _ = pair("gqa")
    ids, _ = prompt(ours, 0, text_len=6)
    cache = ours.new_cache(1, 4)
    written = rf"KV cache holds 4 positions; {ids.shape[1]} were written at position 0.*at least"
    with pytest.raises(GenerationError, match=written):
        ours(ids, cache=cache, start_pos=0)
    with pytest.raises(GenerationError, match="needs start_pos"):  # a default of 0 would overwrite the prompt
        ours(ids[:, :2], cache=cache)


@pytest.mark.parametrize("name", ["mha", "mistral"])
@torch.no_grad()
def test_text_only_and_two_images(pair, name):
    ours, ref = pair(name)
    ids, _ = prompt(ours, 0, text_len=40)
    assert (ours(ids) - ref(input_ids=ids).logits).abs().max() <= ATOL
    ids, pv = prompt(ours, 2, seed=1)
    assert (ours(ids, pv) - ref(input_ids=ids, pixel_values=pv).logits).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["gqa", "mistral", "multilayer"])
@torch.no_grad()
def test_left_padded_batch(pair, name):
    ours, ref = pair(name)
    a, pa = prompt(ours, 1, text_len=40, seed=2)
    b, pb = prompt(ours, 1, text_len=20, seed=3)
    pad = a.shape[1] - b.shape[1]
    ids = torch.cat([a, torch.cat([torch.full((1, pad), 32001), b], 1)])
    mask = (ids != 32001).long()
    pv = torch.cat([pa, pb])
    want = ref(input_ids=ids, pixel_values=pv, attention_mask=mask).logits
    got = ours(ids, pv, attention_mask=mask)
    real = mask.bool()  # padded query positions are undefined in both implementations
    assert (got[real] - want[real]).abs().max() <= ATOL
    # and the padded row equals the same prompt run alone, up to positions shifted by the pad
    alone = ours(b, pb, position_ids=torch.arange(pad, ids.shape[1])[None])
    assert (got[1, pad:] - alone[0]).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["mha", "mistral"])
@torch.no_grad()
def test_cache_prefill_then_decode_equals_full_forward(pair, name):
    ours, _ = pair(name)
    ids, pv = prompt(ours, 1, text_len=50, seed=4)  # 66 tokens: beyond Mistral's window of 24
    full = ours(ids, pv)
    split = ids.shape[1] - 12
    cache = ours.new_cache(1, ids.shape[1])
    steps = [ours(ids[:, :split - 9], pv, cache=cache, start_pos=0),  # two chunks
             ours(ids[:, split - 9:split], cache=cache, start_pos=split - 9)]
    for t in range(split, ids.shape[1]):
        steps.append(ours(ids[:, t:t + 1], cache=cache, start_pos=t))
    assert (torch.cat(steps, 1) - full).abs().max() <= ATOL
    # logits_to_keep=1 gives the last position only
    last = ours(ids, pv, logits_to_keep=1)
    assert last.shape[1] == 1 and (last[:, 0] - full[:, -1]).abs().max() <= ATOL


@torch.no_grad()
def test_cache_with_left_padding(pair):
    ours, _ = pair("gqa")
    a, _ = prompt(ours, 0, text_len=30, seed=5)
    b, _ = prompt(ours, 0, text_len=18, seed=6)
    ids = torch.cat([a, torch.cat([torch.full((1, 12), 32001), b], 1)])
    mask = (ids != 32001).long()
    full = ours(ids, attention_mask=mask)
    cache = ours.new_cache(2, ids.shape[1])
    steps = [ours(ids[:, :20], attention_mask=mask[:, :20], cache=cache, start_pos=0)]
    for t in range(20, ids.shape[1]):
        steps.append(ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache, start_pos=t))
    got = torch.cat(steps, 1)
    assert (got[mask.bool()] - full[mask.bool()]).abs().max() <= ATOL


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.15)])
@torch.no_grad()
def test_half_precision_cpu(folders, dtype, tol):
    """bf16 on CPU against transformers in bf16: different kernels round differently, so the stated
    tolerance is 0.15 on logits of order 5 (transformers' own sdpa vs eager differ by ~3e-2 here)."""
    ours = load_model(folders["gqa"], dtype=dtype)
    ref = C.reference(folders["gqa"], dtype=dtype)
    ids, pv = prompt(ours, 1, seed=8)
    got, want = ours(ids, pv), ref(input_ids=ids, pixel_values=pv).logits
    assert got.dtype == want.dtype == dtype
    assert (got.float() - want.float()).abs().max() <= tol
    assert (got.float().argmax(-1) == want.float().argmax(-1)).float().mean() >= 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_cuda_fp16(folders):
    ours = load_model(folders["mha"], device="cuda", dtype="float16")
    ref = C.reference(folders["mha"], dtype=torch.float16).cuda()
    ids, pv = prompt(ours, 1, seed=9)
    got = ours(ids.cuda(), pv.cuda())
    want = ref(input_ids=ids.cuda(), pixel_values=pv.cuda()).logits
    assert got.dtype == torch.float16 and (got.float() - want.float()).abs().max() <= 0.05


def test_default_dtype_and_frozen(pair):
    ours, _ = pair("mha")
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert not any(p.requires_grad for p in ours.parameters())


@torch.no_grad()
def test_image_token_count_mismatch_is_a_clear_error(pair):
    ours, _ = pair("mha")
    ids, pv = prompt(ours, 1)
    with pytest.raises(PromptError, match="16 image tokens.*2 image"):
        ours(ids, torch.cat([pv, pv]))
    with pytest.raises(PromptError, match="no pixel_values"):
        ours(ids)


def test_strict_loading_names_the_tensor(folders, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(folders["mha"] / "model.safetensors")
    (tmp_path / "config.json").write_text((folders["mha"] / "config.json").read_text())
    for broken, pattern in [
        ({k: v for k, v in state.items() if k != "language_model.model.norm.weight"},
         "missing.*language_model.model.norm.weight"),
        (dict(state, **{"vision_tower.vision_model.extra.weight": torch.zeros(2)}), "fit no parameter.*extra.weight"),
        (dict(state, **{"multi_modal_projector.linear_1.weight": torch.zeros(64, 31)}),
         r"linear_1.weight.*\[64, 31\].*\[64, 32\]"),
    ]:
        save_file(broken, str(tmp_path / "model.safetensors"))
        with pytest.raises(CheckpointError, match=pattern):
            load_model(tmp_path)


# The real config.json texts (llava-hf/llava-1.5-7b-hf, llava-1.5-13b-hf, bakLlava-v1-hf) must resolve to what
# transformers resolves.
VISION_336 = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
              "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
              "vocab_size": 32000}
REAL_CONFIGS = {
    "llava-1.5-7b-hf": {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
                        "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
                        "projector_hidden_act": "gelu",
                        "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                                        "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                                        "torch_dtype": "float16", "vocab_size": 32064},
                        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
                        "vision_config": VISION_336, "vision_feature_layer": -2,
                        "vision_feature_select_strategy": "default", "vocab_size": 32064},
    "llava-1.5-13b-hf": {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
                         "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
                         "projector_hidden_act": "gelu",
                         "text_config": {"_name_or_path": "lmsys/vicuna-13b-v1.5",
                                         "architectures": ["LlamaForCausalLM"], "hidden_size": 5120,
                                         "intermediate_size": 13824, "max_position_embeddings": 4096,
                                         "model_type": "llama", "num_attention_heads": 40, "num_hidden_layers": 40,
                                         "num_key_value_heads": 40, "rms_norm_eps": 1e-05, "torch_dtype": "float16",
                                         "vocab_size": 32064},
                         "tie_word_embeddings": False, "torch_dtype": "float16", "vision_config": VISION_336,
                         "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064},
    "bakLlava-v1-hf": {"image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
                       "projector_hidden_act": "gelu",
                       "text_config": {"_name_or_path": "mistralai/Mistral-7B-v0.1",
                                       "architectures": ["MistralForCausalLM"], "intermediate_size": 14336,
                                       "max_position_embeddings": 32768, "model_type": "mistral",
                                       "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
                                       "sliding_window": 4096, "torch_dtype": "bfloat16", "vocab_size": 32064},
                       "torch_dtype": "bfloat16", "vision_config": VISION_336, "vision_feature_layer": -2,
                       "vision_feature_select_strategy": "default", "vocab_size": 32064},
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_real_configs_resolve_like_transformers(name, tmp_path):
    from transformers import AutoConfig
    (tmp_path / "config.json").write_text(json.dumps(REAL_CONFIGS[name]))
    ref = AutoConfig.from_pretrained(tmp_path)
    ours = LlavaConfig.from_json(tmp_path / "config.json")
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                  "image_size", "patch_size", "hidden_act", "layer_norm_eps"):
        assert getattr(ours.vision_config, field) == getattr(ref.vision_config, field), field
    rt = ref.text_config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                  "sliding_window", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        assert getattr(ours.text_config, field) == getattr(rt, field, None), field
    assert ours.text_config.rope_theta == rt.rope_parameters["rope_theta"]
    # MistralConfig has no bias fields at all (no biases); LlamaConfig has them False
    assert ours.text_config.attention_bias == bool(getattr(rt, "attention_bias", False))
    assert ours.text_config.mlp_bias == bool(getattr(rt, "mlp_bias", False))
    for field in ("image_token_index", "image_seq_length", "projector_hidden_act", "vision_feature_select_strategy",
                  "vision_feature_layer", "multimodal_projector_bias", "tie_word_embeddings", "pad_token_id"):
        assert getattr(ours, field) == getattr(ref, field), field
    with torch.device("meta"):  # and the model built from it has the published parameter count
        n = sum(p.numel() for p in Llava(ours).parameters())
    assert n == {"llava-1.5-7b-hf": 7_063_427_072, "llava-1.5-13b-hf": 13_351_494_656,
                 "bakLlava-v1-hf": 7_566_743_552}[name]


# ---- user mistakes --------------------------------------------------------------------------------------


def test_model_inputs(tiny_model):
    ids = torch.tensor([[1, 5, IMAGE_ID, 7]])
    raises(PromptError, "1 image tokens", "no pixel_values", call=lambda: tiny_model(ids))
    pv = torch.zeros(1, 3, 28, 28)
    raises(PromptError, "1 image tokens", "2 image(s)", call=lambda: tiny_model(ids, torch.cat([pv, pv])))
    raises(ImageError, "(1, 3, 336, 336)", "(n_images, 3, 28, 28)",
           call=lambda: tiny_model(ids, torch.zeros(1, 3, 336, 336)))
    raises(ImageError, "(1, 4, 28, 28)", call=lambda: tiny_model(ids, torch.zeros(1, 4, 28, 28)))
    raises(PromptError, "outside the vocabulary", "max 64", call=lambda: tiny_model(torch.tensor([[1, 64]])))
    raises(PromptError, "outside the vocabulary", "min -1", call=lambda: tiny_model(torch.tensor([[-1, 2]])))
    raises(PromptError, "input_ids", "list", call=lambda: tiny_model([[1, 2]]))
    raises(PromptError, "input_ids", "torch.float32", call=lambda: tiny_model(torch.ones(1, 2)))
    raises(PromptError, "input_ids", "(3,)", call=lambda: tiny_model(torch.tensor([1, 2, 3])))


@pytest.mark.parametrize("act", ["gelu", "relu", "gelu_pytorch_tanh"])
@torch.no_grad()
def test_decoder_activations_other_than_silu(tmp_path, act):
    # transformers' own tiny LLaVA test model uses text_config.hidden_act "gelu"
    text = dict(C.CONFIGS["gqa"]["text_config"], hidden_act=act)
    folder = C.build(tmp_path / act, "gqa", processor=False, seed=6, text_config=text)
    ours, ref = load_model(folder), C.reference(folder)
    ids, pixels = prompt(ours)
    want = ref(input_ids=ids, pixel_values=pixels).logits
    assert (ours(ids, pixels) - want).abs().max() <= ATOL
