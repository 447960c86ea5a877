"""layers.py: a weight kept in float16/bfloat16 and widened as it is used gives exactly F.linear on the float32
weight, block by block where this machine's BLAS agrees and whole where it does not; a float32 weight is plain
F.linear, with autograd (the demo trains through it)."""
import pytest
import torch
import torch.nn.functional as F

from minillava import layers
from minillava.layers import Embedding, Linear, linear_widened

HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def fresh_measurements(monkeypatch):
    monkeypatch.setattr(layers, "_blocks_agree", {})


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows", [64, 192, 10**6])  # several blocks with a ragged last one; one block
def test_widened_is_bit_identical_to_float32(monkeypatch, dtype, rows):
    g = torch.Generator().manual_seed(0)
    N, K = 1000, 96  # 1000 = 15 x 64 + 40: the last block is ragged
    monkeypatch.setattr(layers, "BLOCK_BYTES", rows * K * 4)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g)
    for shape in [(1, 1, K), (2, 37, K), (5, K), (4, 1, K)]:  # decode steps, a prompt batch, a 2-D input
        for bias in (None, b):
            for _ in range(2):  # the first call of a shape measures the blocks, the second uses what it found
                x = torch.randn(*shape, generator=g)
                want = F.linear(x, w.float(), bias)
                got = linear_widened(x, w, bias)
                assert got.shape == want.shape and got.dtype == torch.float32
                assert torch.equal(got, want), (shape, bias is not None)


def widths_multiplied(monkeypatch, perturb_blocks=False):
    """Record the width of every block torch.mm multiplies; perturb_blocks: a BLAS whose partial blocks
    round differently (one ulp up) from the whole matrix."""
    seen = []
    real_mm = torch.mm

    def mm(a, b, out=None):
        whole = not seen or b.shape[1] == seen[0]
        seen.append(b.shape[1])
        y = real_mm(a, b, out=out)
        if perturb_blocks and not whole:
            y.copy_(torch.nextafter(y, torch.full_like(y, float("inf"))))
        return y
    monkeypatch.setattr(torch, "mm", mm)
    return seen


def test_decode_steps_use_blocks_that_agree(monkeypatch):
    """The first one-token call measures: the whole product (its answer), then the blocks; later calls use
    the blocks alone where they agreed, in 64-row multiples (a ragged 47 makes MKL sum in another order)."""
    seen = widths_multiplied(monkeypatch)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 47 * 11008 * 4)
    w = torch.randn(300, 11008).half()
    linear_widened(torch.randn(1, 11008), w)
    assert seen == [300] + [64] * 4 + [44]
    (agree,) = layers._blocks_agree.values()
    seen.clear()
    linear_widened(torch.randn(1, 11008), w)
    assert seen == ([64] * 4 + [44] if agree else [300])
    seen.clear()
    linear_widened(torch.randn(1, 17, 11008), w)  # a prompt: more rows than DECODE_ROWS, always whole
    assert seen == [300]


def test_blocks_that_disagree_fall_back_to_the_whole_matrix(monkeypatch):
    seen = widths_multiplied(monkeypatch, perturb_blocks=True)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 64 * 512 * 4)
    w, x = torch.randn(256, 512).bfloat16(), torch.randn(1, 512)
    want = F.linear(x, w.float())
    assert torch.equal(linear_widened(x, w), want)
    assert seen == [256, 64, 64, 64, 64] and list(layers._blocks_agree.values()) == [False]
    seen.clear()
    x = torch.randn(1, 512)
    assert torch.equal(linear_widened(x, w), F.linear(x, w.float())) and seen == [256]


def test_float32_weight_is_plain_linear_with_autograd():
    torch.manual_seed(0)
    ours, ref = Linear(8, 5), torch.nn.Linear(8, 5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 8)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert torch.equal(ours.weight.grad, ref.weight.grad) and torch.equal(ours.bias.grad, ref.bias.grad)


def test_stored_weight_still_gives_input_gradients():
    lin = Linear(8, 5)
    lin.weight = torch.nn.Parameter(lin.weight.detach().half(), requires_grad=False)
    x = torch.randn(3, 8, requires_grad=True)
    lin(x).sum().backward()
    assert torch.equal(x.grad, lin.weight.float().sum(0).expand(3, 8))


def test_no_random_init_on_meta():
    with torch.device("meta"):
        assert Embedding(32064, 4096).weight.is_meta
