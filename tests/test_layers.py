"""layers.py: a weight kept in float16/bfloat16 and widened as it is used gives exactly F.linear on the float32
weight, block by block where this machine's BLAS agrees and whole where it does not, on one thread or on a team
of threads; a float32 weight is plain F.linear, with autograd (the demo trains through it)."""
import threading

import pytest
import torch
import torch.nn.functional as F

from minillava import layers
from minillava.layers import Embedding, Linear, linear_widened

HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def fresh_measurements(monkeypatch):
    monkeypatch.setattr(layers, "_blocks_agree", {})


@pytest.fixture
def threads(request):
    """torch's thread count for one test (request.param), restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)  # in this thread; a team of 2; a team of 3
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows", [64, 192, 10**6])  # several blocks with a ragged last one; one block
def test_widened_is_bit_identical_to_float32(monkeypatch, threads, dtype, rows):
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


def products_seen(monkeypatch, whole=None):
    """Record (width, thread name, torch threads) for every product torch.mm makes. whole: the width of the
    whole matrix; a product of any other width is perturbed one ulp up, as a BLAS whose blocks round
    differently from the whole matrix would."""
    seen = []
    real_mm = torch.mm

    def mm(a, b, out=None):
        seen.append((b.shape[1], threading.current_thread().name, torch.get_num_threads()))
        y = real_mm(a, b, out=out)
        if whole is not None and b.shape[1] != whole:
            y.copy_(torch.nextafter(y, torch.full_like(y, float("inf"))))
        return y
    monkeypatch.setattr(torch, "mm", mm)
    return seen


def widths(seen):
    return sorted(width for width, _, _ in seen)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_decode_steps_use_blocks_that_agree(monkeypatch, threads):
    """The first one-token call measures: the whole product (its answer), then the blocks; later calls use
    the blocks alone where they agreed, in 64-row multiples (a ragged 47 makes MKL sum in another order)."""
    seen = products_seen(monkeypatch)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 47 * 11008 * 4)
    w = torch.randn(300, 11008).half()
    linear_widened(torch.randn(1, 11008), w)
    assert seen[0][0] == 300 and widths(seen[1:]) == [44] + [64] * 4
    (agree,) = layers._blocks_agree.values()
    seen.clear()
    linear_widened(torch.randn(1, 11008), w)
    assert widths(seen) == ([44] + [64] * 4 if agree else [300])
    seen.clear()
    linear_widened(torch.randn(1, 17, 11008), w)  # a prompt: more rows than DECODE_ROWS, always whole
    assert widths(seen) == [300]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_blocks_that_disagree_fall_back_to_the_whole_matrix(monkeypatch, threads):
    seen = products_seen(monkeypatch, whole=256)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 64 * 512 * 4)
    w, x = torch.randn(256, 512).bfloat16(), torch.randn(1, 512)
    want = F.linear(x, w.float())
    assert torch.equal(linear_widened(x, w), want)
    assert widths(seen) == [64, 64, 64, 64, 256] and list(layers._blocks_agree.values()) == [False]
    seen.clear()
    x = torch.randn(1, 512)
    assert torch.equal(linear_widened(x, w), F.linear(x, w.float())) and widths(seen) == [256]


@pytest.mark.parametrize("threads", [2, 3], indirect=True)
def test_blocks_are_shared_by_a_team_of_one_thread_workers(monkeypatch, threads):
    """With n torch threads, n worker threads multiply the blocks, each with torch on one thread; the caller
    keeps its own count, and so does a thread started afterwards (a worker setting 1 changes torch's default)."""
    seen = products_seen(monkeypatch)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 64 * 512 * 4)
    w = torch.randn(64 * 40, 512).half()
    for _ in range(3):
        x = torch.randn(1, 512)
        assert torch.equal(linear_widened(x, w), F.linear(x, w.float()))
    (agree,) = layers._blocks_agree.values()  # the first call measures with the blocks whatever they give
    blocks = [s for s in seen if s[0] == 64]
    assert len(blocks) == 40 * (3 if agree else 1) and {(name, n) for _, name, n in blocks} == {("minillava-widen", 1)}
    assert torch.get_num_threads() == threads and len(layers._teams[threads].workers) == threads
    later = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [threads]


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_a_worker_error_is_raised_in_the_caller(monkeypatch, threads):
    real_mm = torch.mm

    def mm(a, b, out=None):
        if threading.current_thread().name == "minillava-widen":
            raise RuntimeError("a worker failed")
        return real_mm(a, b, out=out)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 64 * 512 * 4)
    w, x = torch.randn(1024, 512).half(), torch.randn(1, 512)
    monkeypatch.setattr(torch, "mm", mm)
    with pytest.raises(RuntimeError, match="a worker failed"):
        linear_widened(x, w)
    monkeypatch.setattr(torch, "mm", real_mm)  # the team still works afterwards
    assert torch.equal(linear_widened(x, w), F.linear(x, w.float()))


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_two_callers_at_once_each_get_their_product(monkeypatch, threads):
    monkeypatch.setattr(layers, "BLOCK_BYTES", 64 * 256 * 4)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(64 * 30, 256, generator=g).half() for _ in range(2)]
    xs = [torch.randn(1, 256, generator=g) for _ in range(2)]
    for w, x in zip(ws, xs):  # measure the shape first, so the threads below run the blocks
        linear_widened(x, w)
    got = [[], []]

    def call(i):
        for _ in range(20):
            got[i].append(linear_widened(xs[i], ws[i]))
    callers = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    for i in range(2):
        want = F.linear(xs[i], ws[i].float())
        assert len(got[i]) == 20 and all(torch.equal(y, want) for y in got[i])


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
