"""Compiled decoding (minillava/compiled.py) against the eager path, the exact reference: the same greedy tokens,
logits within float32 rounding, one compile per shape. A CPU compile takes seconds to tens of seconds per shape,
so the compiled kernels are tested on one tiny variant (Mistral: grouped-query attention and a sliding window, the
static mask's every branch); the other decoders and the demo run the same static step traced whole by dynamo and
run by its eager backend, which makes no kernels."""
import os
import shutil
import weakref

import pytest
import torch

import minillava
from minillava import ChatSession, GenerationError, compiled, testing
from minillava.cli import main
from minillava.generation import decode_step, generate, prefill
from tests.helpers.mistakes import raises

CXX = os.environ.get("CXX", "g++")
needs_compiler = pytest.mark.skipif(not torch._dynamo.is_dynamo_supported() or not shutil.which(CXX),
                                    reason=f"torch.compile needs a supported Python and, on the CPU, a C++ compiler "
                                           f"({CXX} not found)")
N = 10
PAD = testing.PAD_TOKEN_ID


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return testing.write_checkpoint(tmp_path_factory.mktemp("compiled") / "mistral", "mistral")


@pytest.fixture(scope="module")
def mistral(folder):
    return minillava.load(folder)


def prompt(model, n_images=1, text_len=20, seed=0):
    """Random ids of the demo tokenizer's text tokens around one image's run of <image> tokens."""
    g = torch.Generator().manual_seed(seed)
    config, vision = model.config, model.config.vision_config
    text = torch.randint(3, config.image_token_index, (text_len,), generator=g)
    n = vision.num_patches + (config.vision_feature_select_strategy == "full")
    image = torch.full((n * n_images,), config.image_token_index)
    ids = torch.cat([torch.tensor([1]), text[:text_len // 2], image, text[text_len // 2:]])
    size = vision.image_size
    return ids[None], torch.randn(n_images, 3, size, size, generator=g) if n_images else None


def graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def padded_batch(model):
    """Three prompts of different lengths, each with an image, left-padded."""
    rows = [prompt(model, 1, text_len=n, seed=40 + n) for n in (12, 30, 21)]
    T = max(r[0].shape[1] for r in rows)
    ids = torch.cat([torch.cat([torch.full((1, T - r[0].shape[1]), PAD), r[0]], 1) for r in rows])
    return ids, torch.cat([r[1] for r in rows]), (ids != PAD).long()


@needs_compiler
def test_compiled_greedy_tokens_equal_eager_batch_1_and_padded_batch(mistral):
    model, _ = mistral
    ids, pv = prompt(model, 1, text_len=20, seed=3)
    eager = generate(model, ids, pv, max_new_tokens=N, eos_token_id=[])  # no EOS: every token compared
    before = graphs()
    assert torch.equal(generate(model, ids, pv, max_new_tokens=N, eos_token_id=[], compile=True), eager)
    assert graphs() == before + 1  # one graph for every step of the run
    ids, pv, mask = padded_batch(model)
    eager = generate(model, ids, pv, attention_mask=mask, max_new_tokens=N, eos_token_id=[])
    assert torch.equal(generate(model, ids, pv, attention_mask=mask, max_new_tokens=N, eos_token_id=[],
                                compile=True), eager)
    assert graphs() == before + 2  # a batch of 3 is another shape


@needs_compiler
@torch.no_grad()
def test_compiled_step_logits_within_float32_rounding_of_eager(mistral):
    model, _ = mistral
    ids, pv, attention_mask = padded_batch(model)
    B, T = ids.shape
    mask = torch.zeros(B, 1024, dtype=torch.long)  # wide enough for either cache
    mask[:, :T + 1] = torch.cat([attention_mask, torch.ones(B, 1, dtype=torch.long)], 1)
    token = torch.tensor([5, 17, 300])
    eager_cache, static_cache = model.new_cache(B, T + 1), model.new_cache(B, 1024, static=True)
    prefill(model, ids, pv, mask, eager_cache)
    prefill(model, ids, pv, mask, static_cache)
    want = decode_step(model, token, mask, eager_cache, T)
    got = compiled.decoder(model, decode_step)(model, token, mask, static_cache, T)
    assert want.abs().max() > 1  # logits of order 1: the tolerance means something
    assert (got - want).abs().max() <= 1e-5


@needs_compiler
def test_compiled_chat_turns_and_later_runs_reuse_the_graph(mistral):
    model, processor = mistral
    session = ChatSession(model, processor, max_new_tokens=6, compile=True)
    eager = ChatSession(model, processor, max_new_tokens=6)
    image = testing.image(seed=4)
    for text, images in (("What is this?", [image]), ("And the colour?", [])):
        assert "".join(session.ask(text, images=images)) == "".join(eager.ask(text, images=images))
        assert session.last_tokens == eager.last_tokens
    before = graphs()
    ids, pv = prompt(model, 1, text_len=33, seed=5)  # another prompt length, the same cache length
    generate(model, ids, pv, max_new_tokens=N, compile=True)
    assert graphs() == before  # batch 1 x 1024 positions: compiled by the first test or the first turn
    assert (1, 1024) in compiled.decoder(model, decode_step).compile_seconds


def test_compile_wants_weights_in_the_compute_dtype(tmp_path):
    folder = testing.write_checkpoint(tmp_path / "half", "gqa", dtype=torch.float16)
    model, _ = minillava.load(folder)  # float32 compute, float16 weights kept as stored
    ids, _ = prompt(model, 0, text_len=8)
    raises(GenerationError, "weights='materialized'", "torch.float16", "--dtype",
           call=lambda: generate(model, ids, max_new_tokens=2, compile=True))


def test_compile_needs_a_static_cache_and_a_compiler(mistral, monkeypatch):
    model, _ = mistral
    ids, _ = prompt(model, 0, text_len=8)
    raises(GenerationError, "static=True", call=lambda: generate(
        model, ids, max_new_tokens=2, cache=model.new_cache(1, 16), compile=True))
    monkeypatch.setattr(compiled, "_decoders", {})  # no compiled step yet: the check runs
    monkeypatch.setenv("CXX", "no-such-compiler")
    raises(GenerationError, "C++ compiler", "no-such-compiler", call=lambda: generate(
        model, ids, max_new_tokens=2, compile=True))


@needs_compiler
def test_cli_compile_prints_the_compile_time(folder, tmp_path, capsys):
    image = tmp_path / "shapes.png"
    testing.image(seed=4).save(image)
    status = main(["ask", "--model", str(folder), "--image", str(image), "--compile", "--max-new-tokens", "3", "Hi"])
    out, err = capsys.readouterr()
    assert status == 0 and out.strip(), err
    assert err.startswith("minillava: compiled the decode step (batch 1, cache of 1024 positions): its first step "
                          "took ") and err.endswith(" s\n")


# the variants whose decoders differ (multilayer and no_projector_bias change only what the prompt step runs)
@pytest.mark.parametrize("variant", ["mha", "gqa", "tied", "demo"])
def test_static_step_traced_whole_gives_eager_tokens(variant, tmp_path, monkeypatch):
    """The static path (tensor position, mask over the whole cache) traced by dynamo in one graph and run by
    its eager backend: no kernels compiled, so cheap; Mistral's compiled kernels are checked above."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode, **options: real(fn, backend="eager", **options))
    monkeypatch.setattr(compiled, "_decoders", weakref.WeakKeyDictionary())
    torch._dynamo.reset()  # a fresh count of recompiles (each variant is a new shape); last in this file: the
    # compiled graphs of the tests above are dropped
    folder = minillava.DEMO if variant == "demo" else testing.write_checkpoint(tmp_path / variant, variant)
    model, _ = minillava.load(folder)
    ids, pv = prompt(model, 1, text_len=20, seed=3)
    eager = generate(model, ids, pv, max_new_tokens=N, eos_token_id=[])
    assert torch.equal(generate(model, ids, pv, max_new_tokens=N, eos_token_id=[], compile=True), eager)
    torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_graphs_greedy_tokens_equal_eager(tmp_path, dtype):
    model, _ = minillava.load(testing.write_checkpoint(tmp_path / "gqa", "gqa", dtype=dtype), device="cuda")
    ids, pv = prompt(model, 1, text_len=20, seed=3)
    pv = pv.to("cuda", dtype)
    eager = generate(model, ids, pv, max_new_tokens=N, eos_token_id=[])
    for run in range(3):  # the first run compiles (and warms up), the second records the CUDA graph, then replays
        assert torch.equal(generate(model, ids, pv, max_new_tokens=N, eos_token_id=[], compile=True), eager)
        if run == 0:
            before = graphs()
    assert graphs() == before
