"""Generation against transformers' `generate` on the same tiny checkpoints (fp32 CPU), and sampling."""
import numpy as np
import pytest
import torch

from minillava import GenerationError, PromptError, load_model
from minillava.generation import generate, generate_tokens, sample
from tests.helpers import checkpoints as C
from tests.helpers.mistakes import raises
from tests.test_llava import prompt

N = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    out = {}
    for name in ("mha", "mistral"):
        folder = C.build(root / name, name, processor=False, seed=11)
        out[name] = (load_model(folder), C.reference(folder))
    return out


def hf_generate(ref, ids, pv=None, mask=None, eos=2):
    extra = {"pixel_values": pv} if pv is not None else {}
    out = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False,
                       eos_token_id=eos, pad_token_id=32001, **extra)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("name", ["mha", "mistral"])
@pytest.mark.parametrize("images", [0, 1])
def test_greedy_matches_transformers(models, name, images):
    ours, ref = models[name]
    ids, pv = prompt(ours, images, text_len=20, seed=21 + images)
    want = hf_generate(ref, ids, pv, eos=None)  # no EOS: all 32 tokens compared
    got = generate(ours, ids, pv, max_new_tokens=N, eos_token_id=[])
    assert got.shape == (1, N)
    assert torch.equal(got, want)


def test_greedy_left_padded_batch_matches_transformers(models):
    """Prompts of different lengths and images, left-padded, each row stopping at its own EOS."""
    ours, ref = models["mistral"]
    rows = [prompt(ours, 1, text_len=n, seed=30 + n) for n in (12, 30, 21)]
    T = max(r[0].shape[1] for r in rows)
    ids = torch.cat([torch.cat([torch.full((1, T - r[0].shape[1]), 32001), r[0]], 1) for r in rows])
    mask = (ids != 32001).long()
    pv = torch.cat([r[1] for r in rows])
    # pick as EOS a token the reference emits mid-way in one row, so early stopping is exercised
    free = hf_generate(ref, ids, pv, mask, eos=None)
    eos = int(free[1, 5])
    want = hf_generate(ref, ids, pv, mask, eos=eos)
    got = generate(ours, ids, pv, attention_mask=mask, max_new_tokens=N, eos_token_id=eos)
    assert torch.equal(got, want[:, :got.shape[1]]) and (want[:, got.shape[1]:] == 32001).all()
    assert (got[1, 6:] == 32001).all()  # the row that hit EOS is padded afterwards
    # and each row alone gives the same tokens as inside the batch, up to its EOS
    for i, (row_ids, row_pv) in enumerate(rows):
        alone = generate(ours, row_ids, row_pv, max_new_tokens=N, eos_token_id=eos)
        assert torch.equal(alone[0], got[i, :alone.shape[1]])


def test_sampling_is_reproducible_with_a_seed(models):
    ours, _ = models["mha"]
    ids, pv = prompt(ours, 1, text_len=10, seed=40)
    runs = [generate(ours, ids, pv, max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9, eos_token_id=[],
                     generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_k_and_top_p_on_hand_made_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = lambda **kw: {int(sample(logits, 1.0, generator=g, **kw)) for _ in range(300)}
    assert draws() == {0, 1, 2, 3}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.5) == {0}  # 0.5 alone reaches p = 0.5
    assert draws(top_p=0.79) == {0, 1}
    assert draws(top_p=0.81) == {0, 1, 2}
    assert draws(top_k=3, top_p=0.7) == {0, 1}
    assert int(sample(logits, 0.0)) == 0  # temperature 0 is argmax
    # frequencies follow the probabilities
    counts = torch.bincount(torch.stack([sample(logits, 1.0, generator=g) for _ in range(4000)]).flatten(), minlength=4)
    assert torch.allclose(counts / 4000, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)


def test_every_check_runs_before_the_first_token(models):
    """generate_tokens raises when called, not at the first next(): a chat never prints half an answer first."""
    ours, _ = models["mha"]
    ids = torch.ones(1, 4000, dtype=torch.long)
    with pytest.raises(PromptError, match=r"4000 tokens \+ max_new_tokens 100 = 4100 exceeds the context length 4096"):
        generate_tokens(ours, ids, max_new_tokens=100)
    with pytest.raises(GenerationError, match="temperature = -1"):
        generate_tokens(ours, ids[:, :5], temperature=-1)
    with pytest.raises(PromptError, match="non-empty"):
        generate(ours, torch.ones(1, 0, dtype=torch.long))


def test_a_cache_passed_in_must_fit_the_run(models):
    ours, _ = models["mha"]
    ids, _ = prompt(ours, 0, text_len=5)
    T = ids.shape[1]
    with pytest.raises(GenerationError, match=rf"1 row\(s\) x {T} positions; this run needs 1 x {T + 3}"):
        generate_tokens(ours, ids, max_new_tokens=4, cache=ours.new_cache(1, T))
    with pytest.raises(GenerationError, match=rf"2 row\(s\) x 64 positions; this run needs 1 x {T + 3}"):
        generate_tokens(ours, ids, max_new_tokens=4, cache=ours.new_cache(2, 64))
    with pytest.raises(GenerationError, match="start_pos = 3 without a cache"):
        generate_tokens(ours, ids, attention_mask=torch.ones(1, T + 3), start_pos=3)
    with pytest.raises(GenerationError, match="start_pos = -1, expected an integer >= 0"):
        generate_tokens(ours, ids, cache=ours.new_cache(1, 64), start_pos=-1)
    # a cache that holds a prefix: the rest of the prompt runs after it, with the same tokens as a fresh run
    cache = ours.new_cache(1, T + 4)
    generate_tokens(ours, ids[:, :3], max_new_tokens=1, cache=cache)  # fills positions 0, 1, 2
    rest = generate(ours, ids[:, 3:], max_new_tokens=4, eos_token_id=[], cache=cache, start_pos=3,
                    attention_mask=torch.ones(1, T))
    assert torch.equal(rest, generate(ours, ids, max_new_tokens=4, eos_token_id=[]))


def test_a_generated_image_token_is_just_a_token(models):
    """An untrained model may emit the <image> id; decoding goes on (transformers embeds it like any token)."""
    ours, ref = models["mha"]
    ids, _ = prompt(ours, 0, text_len=8, seed=50)
    forced = generate(ours, ids, max_new_tokens=1, eos_token_id=[])
    with torch.no_grad():  # make <image> the argmax of the first step by biasing lm_head toward it
        row = ours.language_model.lm_head.weight[32000].clone()
        ours.language_model.lm_head.weight[32000] = ours.language_model.lm_head.weight[int(forced[0, 0])] * 3
        try:
            out = generate(ours, ids, max_new_tokens=3, eos_token_id=[])
        finally:
            ours.language_model.lm_head.weight[32000] = row
    assert int(out[0, 0]) == 32000 and out.shape == (1, 3)


# ---- user mistakes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,culprit", [
    (dict(max_new_tokens=0), "max_new_tokens = 0"), (dict(max_new_tokens=-3), "max_new_tokens = -3"),
    (dict(max_new_tokens=2.0), "max_new_tokens = 2.0"), (dict(max_new_tokens=True), "max_new_tokens = True"),
    (dict(temperature=-0.1), "temperature = -0.1"), (dict(temperature=float("nan")), "temperature = nan"),
    (dict(temperature="hot"), "temperature = 'hot'"),
    (dict(top_p=0), "top_p = 0"), (dict(top_p=1.5), "top_p = 1.5"), (dict(top_p=-0.2), "top_p = -0.2"),
    (dict(top_p=float("nan")), "top_p = nan"), (dict(top_k=-1), "top_k = -1"), (dict(top_k=2.5), "top_k = 2.5"),
    (dict(temperature=float("inf")), "temperature = inf"), (dict(top_p=True), "top_p = True"),
    (dict(eos_token_id="</s>"), "eos_token_id = '</s>'"), (dict(eos_token_id=[2, None]), "eos_token_id = [2, None]"),
    (dict(eos_token_id=64), "eos_token_id = 64"), (dict(eos_token_id=[-1]), "eos_token_id = [-1]"),
    (dict(pad_token_id=-1), "pad_token_id = -1"), (dict(pad_token_id=1.0), "pad_token_id = 1.0"),
    (dict(compile="no"), "compile = 'no'"), (dict(compile=1), "compile = 1")])
def test_generation_settings(tiny_model, kw, culprit):
    raises(GenerationError, culprit, call=lambda: generate(tiny_model, torch.tensor([[1, 2, 3]]), **kw))


def test_numpy_integers_are_integers(tiny_model):
    out = generate(tiny_model, torch.tensor([[1, 2, 3]]), max_new_tokens=np.int64(3), top_k=np.int32(0),
                   eos_token_id=[np.int64(5)], pad_token_id=np.int64(0))
    assert 1 <= out.shape[1] <= 3


def test_prompts_generate_cannot_run(tiny_model, tiny_processor):
    raises(PromptError, "60 tokens", "max_new_tokens 10", "context length 64",
           call=lambda: generate(tiny_model, torch.ones(1, 60, dtype=torch.long), max_new_tokens=10))
    raises(PromptError, "non-empty", "(1, 0)", call=lambda: generate(tiny_model, torch.ones(1, 0, dtype=torch.long)))
    raises(PromptError, "non-empty", "list", call=lambda: generate(tiny_model, [[1, 2]]))
    raises(PromptError, "non-empty", call=lambda: tiny_model(torch.ones(1, 0, dtype=torch.long)))
    raises(PromptError, "attention_mask", "(1, 2)", "(1, 3)",
           call=lambda: generate(tiny_model, torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2)))
    raises(PromptError, "outside the vocabulary", call=lambda: generate(tiny_model, torch.tensor([[1, 99]])))
    # an empty string is a valid prompt for the processor (BOS alone, as in transformers); it is not empty
    assert tiny_processor("")["input_ids"].tolist() == [[1]]
    assert generate(tiny_model, torch.tensor([[1]]), max_new_tokens=2).shape[1] in (1, 2)

