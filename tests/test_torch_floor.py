"""The torch floor of pyproject.toml is true.

The oldest torch the package supports is the one tests/fixtures/torch_floor_api.json was recorded under, by
tests/helpers/torch_api.py: every torch function, class and keyword argument the package's code uses, and whether
that release has it. These tests read the code again and fail on anything that record does not vouch for. On the
current torch, both ways grouped-query attention can run (SDPA's `enable_gqa`, new in torch 2.5, and the key/value
heads repeated before SDPA, the way older torch needs) give transformers' logits exactly.
"""
import json
import re
from pathlib import Path

import pytest
import torch

import minillava.llama
from minillava import load_model
from tests.helpers import checkpoints as C
from tests.helpers.torch_api import uses
from tests.test_llava import prompt

ROOT = Path(__file__).parent.parent
FLOOR = json.loads((ROOT / "tests" / "fixtures" / "torch_floor_api.json").read_text())
RECORD = (f"run `python -m tests.helpers.torch_api > tests/fixtures/torch_floor_api.json` under "
          f"torch=={FLOOR['torch']} to check it there and record it")
# attributes the code uses on lists, strings, sets and argparse's namespace that torch.Tensor or nn.Module have gained
# since the floor (Tensor.index; a set's add, args.compile in commands.py)
NOT_TORCH = {"index", "add", "compile"}


def test_pyproject_and_readme_name_the_recorded_floor():
    major_minor = ".".join(FLOOR["torch"].split(".")[:2])
    assert re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1) == major_minor
    assert f"torch >= {major_minor}" in (ROOT / "README.md").read_text()


def unvouched(names, attributes):
    """What the floor record does not vouch for, in words: [] when all of it is there."""
    problems = [f"{name}: not checked against torch {FLOOR['torch']}; {RECORD}"
                for name in names if name not in FLOOR["names"]]
    for name, keywords in names.items():
        floor = FLOOR["names"].get(name)
        if floor and not floor["exists"]:
            problems.append(f"{name} does not exist in torch {FLOOR['torch']}")
        elif floor and keywords and floor["keywords"] != "any":
            if floor["keywords"] is None:
                problems.append(f"{name}{sorted(keywords)}: its keywords are not known; {RECORD}")
            elif keywords - set(floor["keywords"]):
                extra = sorted(keywords - set(floor["keywords"]))
                problems.append(f"{name} takes no {extra} in torch {FLOOR['torch']}")
    newer = sorted(attributes - set(FLOOR["attributes"]) - NOT_TORCH)
    return problems + [f"{newer}: torch.Tensor or nn.Module have them only after torch {FLOOR['torch']}"] * bool(newer)


def test_the_code_uses_only_what_the_floor_torch_has():
    assert unvouched(*uses()) == []


def test_the_check_sees_what_is_newer(tmp_path):
    """enable_gqa (torch 2.5) passed by name, as llama.py once did; flex attention (2.5); a function not recorded."""
    (tmp_path / "newer.py").write_text("import torch\nimport torch.nn.functional as F\n"
                                       "from torch.nn.attention.flex_attention import flex_attention\n"
                                       "y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)\n"
                                       "z = flex_attention(q, k, v)\nw = torch.get_default_device()\n")
    problems = unvouched(*uses(tmp_path))
    assert any("takes no ['enable_gqa'] in torch 2.4.1" in p for p in problems)
    assert any(p.startswith("torch.nn.attention.flex_attention.flex_attention: not checked") for p in problems)
    assert any(p.startswith("torch.get_default_device: not checked") for p in problems)  # in 2.4, but not recorded


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """(minillava, transformers) on the two grouped-query variants: Llama and Mistral with a sliding window."""
    root = tmp_path_factory.mktemp("gqa")
    return {name: (load_model(folder), C.reference(folder))
            for name in ("gqa", "mistral") for folder in [C.build(root / name, name, processor=False)]}


@pytest.mark.parametrize("enable_gqa", [True, False], ids=["enable_gqa", "repeat_kv"])
@pytest.mark.parametrize("name", ["gqa", "mistral"])
@torch.no_grad()
def test_both_attention_paths_give_transformers_logits(grouped, monkeypatch, name, enable_gqa):
    monkeypatch.setattr(minillava.llama, "SDPA_GQA", enable_gqa)
    ours, ref = grouped[name]
    ids, pixels = prompt(ours, 1)
    assert torch.equal(ours(ids, pixels), ref(input_ids=ids, pixel_values=pixels).logits)
    # a left-padded batch: SDPA gets an explicit mask
    (a, pa), (b, pb) = prompt(ours, 1, text_len=40, seed=2), prompt(ours, 1, text_len=20, seed=3)
    ids = torch.cat([a, torch.cat([torch.full((1, a.shape[1] - b.shape[1]), 32001), b], 1)])
    mask = (ids != 32001).long()
    got = ours(ids, torch.cat([pa, pb]), attention_mask=mask)
    want = ref(input_ids=ids, pixel_values=torch.cat([pa, pb]), attention_mask=mask).logits
    assert torch.equal(got[mask.bool()], want[mask.bool()])
    # decoding from the KV cache, one token at a time
    ids, pixels = prompt(ours, 1, text_len=40, seed=4)
    n = ids.shape[1]
    cache = ours.new_cache(1, n)
    steps = [ours(ids[:, :n - 3], pixels, cache=cache, start_pos=0)]
    steps += [ours(ids[:, t:t + 1], cache=cache, start_pos=t) for t in range(n - 3, n)]
    assert (torch.cat(steps, 1) - ours(ids, pixels)).abs().max() <= 1e-5
