"""Devices, dtypes and memory: what this machine cannot run is refused with a DeviceError before anything is loaded;
the three modes (float32 from stored half-precision weights, float32 materialized, half precision) and their parity.
"""

import sys
import time

import pytest
import torch

import minillava
from minillava import DeviceError, Llava, LlavaConfig, layers, load_model, loading
from minillava.checkpoint import stored_tensors
from minillava.loading import WEIGHTS, resolve_device, resolve_dtype
from tests.helpers import checkpoints as C
from tests.helpers.mistakes import raises
from tests.test_llava import REAL_CONFIGS

HALF = [torch.float16, torch.bfloat16]

# ---- devices and dtypes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "float64", "fp8", torch.int8, torch.float64, 3, "auto"])
def test_dtype_that_cannot_run(tiny, dtype):
    raises(DeviceError, "dtype", str(dtype).removeprefix("torch."), call=lambda: load_model(tiny, dtype=dtype))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 3.5, "meta", "xla"])
def test_device_that_does_not_exist(device):
    raises(DeviceError, repr(device) if not isinstance(device, str) else device, call=lambda: resolve_device(device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda(tiny):
    raises(DeviceError, "'cuda'", "CUDA is not available", call=lambda: load_model(tiny, device="cuda"))
    raises(DeviceError, "'cuda:1'", call=lambda: minillava.load(tiny, device="cuda:1"))


def test_cuda_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    raises(DeviceError, "Tesla T4", "bfloat16", "float16",
           call=lambda: resolve_dtype("bfloat16", torch.device("cuda"), None))
    raises(DeviceError, "Tesla T4", call=lambda: resolve_dtype(None, torch.device("cuda"), "bfloat16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_only_where_unsupported(tiny):
    if torch.cuda.is_bf16_supported():
        assert load_model(tiny, device="cuda", dtype="bfloat16").dtype == torch.bfloat16
    else:
        raises(DeviceError, "bfloat16", call=lambda: load_model(tiny, device="cuda", dtype="bfloat16"))


# ---- storage and compute apart: float16 / bfloat16 files, float32 arithmetic ----------------------------------

@pytest.fixture(scope="session")
def half_folders(tmp_path_factory):
    """Every test configuration saved as float16 and as bfloat16 (the real checkpoints' dtypes)."""
    root = tmp_path_factory.mktemp("half")
    return {(name, dtype): C.build(root / f"{name}-{str(dtype)[6:]}", name, processor=False, dtype=dtype, seed=11)
            for name in C.CONFIGS for dtype in HALF}


def image_prompt(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n = cfg.vision_config.num_patches + (cfg.vision_feature_select_strategy == "full")
    ids = torch.cat([torch.tensor([[1]]), torch.randint(3, 32000, (1, 7), generator=g), torch.full((1, n), 32000),
                     torch.randint(3, 32000, (1, 12), generator=g)], 1)
    return ids, torch.randn(1, 3, 56, 56, generator=g)


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(C.CONFIGS))
@torch.no_grad()
def test_stored_weights_give_transformers_float32_exactly(monkeypatch, half_folders, name, dtype):
    """The CPU default on a half-precision file: float32 logits, difference 0.0 against transformers float32,
    with the Linear weights still in the file's dtype. Blocks of 64 rows, so every matrix is cut in several."""
    monkeypatch.setattr(layers, "BLOCK_BYTES", 1)
    folder = half_folders[name, dtype]
    ours = load_model(folder)
    ref = C.reference(folder, dtype=torch.float32)
    lm = ours.language_model
    assert ours.dtype == torch.float32 and lm.model.norm.weight.dtype == torch.float32
    assert lm.lm_head.weight.dtype == lm.model.embed_tokens.weight.dtype == dtype
    assert ours.embed_tokens(torch.tensor([[3, 1]])).dtype == torch.float32  # the rows, widened
    assert lm.model.layers[0].mlp.down_proj.weight.dtype == ours.multi_modal_projector.linear_1.weight.dtype == dtype
    assert ours.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype == torch.float32  # small: converted
    ids, pv = image_prompt(ours)
    want = ref(input_ids=ids, pixel_values=pv).logits
    got = ours(ids, pv)
    assert got.dtype == torch.float32 and want.abs().max() > 1
    assert (got - want).abs().max() == 0.0
    materialized = load_model(folder, weights="materialized")
    assert all(p.dtype == torch.float32 for p in materialized.parameters())
    assert (materialized(ids, pv) - want).abs().max() == 0.0
    # a decode step reads the stored weights too: the cached path equals the materialized model's
    cache_a, cache_b = ours.new_cache(1, ids.shape[1]), materialized.new_cache(1, ids.shape[1])
    assert cache_a.k[0].dtype == torch.float32
    for model, cache in ((ours, cache_a), (materialized, cache_b)):
        model(ids[:, :-2], pv, cache=cache, start_pos=0)
    step = ids.shape[1] - 2
    assert torch.equal(ours(ids[:, -2:-1], cache=cache_a, start_pos=step),
                       materialized(ids[:, -2:-1], cache=cache_b, start_pos=step))


def test_half_precision_mode_computes_in_half(half_folders):
    folder = half_folders["gqa", torch.bfloat16]
    model = load_model(folder, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    ids, pv = image_prompt(model)
    assert model(ids, pv).dtype == torch.bfloat16


def test_float32_file_is_float32_in_every_mode(tiny):
    for weights in WEIGHTS:
        assert all(p.dtype == torch.float32 for p in load_model(tiny, weights=weights).parameters())


def test_weights_mode_that_does_not_exist(tiny):
    raises(DeviceError, "'float16'", "'stored' or 'materialized'", call=lambda: load_model(tiny, weights="float16"))


# ---- the memory check ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sparse_7b(tmp_path_factory):
    """llava-1.5-7b-hf at full size: its real config.json and a 14 GB float16 safetensors file that is all hole."""
    return C.sparse_checkpoint(tmp_path_factory.mktemp("sparse") / "llava-1.5-7b-hf", REAL_CONFIGS["llava-1.5-7b-hf"])


def needs(folder, dtype, weights):
    """What the memory check computes for a mode, in bytes."""
    config = LlavaConfig.from_json(folder)
    with torch.device("meta"):
        model = Llava(config)
    return sum(loading.mode_memory(model, stored_tensors(folder), folder, dtype, weights).values())


def fake_available(monkeypatch, nbytes, source="faked by the test"):
    """The memory the check sees. Whatever the machine really has, nothing is allocated: a load that passed the
    check would next read the weights, which fails the test instead."""
    monkeypatch.setattr(loading, "memory_available", lambda device: (int(nbytes), source))
    monkeypatch.setattr(loading, "load_weights", lambda *a, **k: pytest.fail("weights read after a failed check"))


def test_memory_figures_of_the_7b(sparse_7b):
    stored, materialized = needs(sparse_7b, torch.float32, "stored"), needs(sparse_7b, torch.float32, "materialized")
    half = needs(sparse_7b, torch.float16, "stored")
    # weights: 14.13 GB float16 (+ a few MB of small tensors in float32) vs 28.25 GB; KV cache 1024 positions;
    # stored: + the 0.53 GB buffer the lm_head (32064 x 4096) is widened into
    assert 14.1e9 + 1.07e9 + 0.52e9 < stored < 14.2e9 + 1.07e9 + 1.6e9
    assert 28.25e9 + 1.07e9 < materialized < 28.3e9 + 2.1e9 and materialized - stored > 13e9
    assert 14.1e9 + 0.53e9 < half < stored


def test_a_load_that_cannot_fit_fails_within_2_seconds(monkeypatch, sparse_7b):
    """Between what float16 and stored float32 need: the message names both figures and the mode that fits."""
    available = (needs(sparse_7b, torch.float16, "stored") + needs(sparse_7b, torch.float32, "stored")) / 2
    fake_available(monkeypatch, available)
    t = time.perf_counter()
    with pytest.raises(DeviceError) as e:
        load_model(sparse_7b, weights="materialized")
    assert time.perf_counter() - t < 2
    msg = str(e.value)
    assert "\n" not in msg and str(sparse_7b) in msg and "faked by the test" in msg
    assert "needs 30.3 GB" in msg and "weights 28.3 GB" in msg and f"{available / 1e9:.1f} GB are available" in msg
    assert "dtype='float16' needs 15.6 GB and fits" in msg and "weights='stored' needs" not in msg
    raises(DeviceError, "dtype='float16'", "fits", call=lambda: minillava.load(sparse_7b))


def test_nothing_fits(monkeypatch, sparse_7b):
    fake_available(monkeypatch, 8e9)
    raises(DeviceError, "8.0 GB are available", "no mode fits", call=lambda: load_model(sparse_7b))


def test_unknown_available_memory_skips_the_check(monkeypatch, tiny):
    monkeypatch.setattr(loading, "memory_available", lambda device: (None, "not measured"))
    assert load_model(tiny).dtype == torch.float32


def test_available_memory_of_this_machine():
    free, source = loading.memory_available(torch.device("cpu"))
    if sys.platform.startswith("linux"):
        assert free > 0 and ("MemAvailable" in source or "cgroup" in source)


# ---- CUDA: exact float32 from half-precision storage on a GPU, and the check against the GPU's free memory ------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@torch.no_grad()
def test_cuda_float32_from_stored_half(monkeypatch, half_folders, dtype):
    """float32 on the GPU with the weights kept in the file's dtype, against transformers float32 on the CPU.
    TF32 off: torch's default for matrix products, but not for cuDNN's convolutions (CLIP's patch
    embedding), which the test turns off. The GPU then differs only in summation order: 1e-4 on logits of order 5.
    Against the same model with float32 weights on the same GPU (the same kernels on the same values): 1e-6."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the default; set in case a caller changed it
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    folder = half_folders["gqa", dtype]
    ours = load_model(folder, device="cuda", dtype="float32")
    assert ours.dtype == torch.float32 and ours.language_model.lm_head.weight.dtype == dtype
    assert ours.device.type == "cuda"
    ids, pv = image_prompt(ours)
    want = C.reference(folder, dtype=torch.float32)(input_ids=ids, pixel_values=pv).logits
    got = ours(ids.cuda(), pv.cuda())
    assert got.dtype == torch.float32 and got.device.type == "cuda"
    assert (got.cpu() - want).abs().max() <= 1e-4
    materialized = load_model(folder, device="cuda", dtype="float32", weights="materialized")
    assert (materialized(ids.cuda(), pv.cuda()) - got).abs().max() <= 1e-6
    assert load_model(folder, device="cuda").dtype == dtype  # the GPU default stays the checkpoint's dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_memory_check(monkeypatch, tiny, sparse_7b):
    free, source = loading.memory_available(torch.device("cuda"))
    assert abs(free - torch.cuda.mem_get_info()[0]) < 2**28 and "mem_get_info" in source  # others may allocate
    assert load_model(tiny, device="cuda").device.type == "cuda"  # the real check passes for a small model
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(20e9), int(24e9)))
    monkeypatch.setattr(loading, "load_weights", lambda *a, **k: pytest.fail("weights read after a failed check"))
    # a 24 GB GPU: float32 materialized (28 GB of weights) cannot fit; stored float32 and float16 can
    raises(DeviceError, "on cuda", "20.0 GB are available", "weights='stored' needs", "fits",
           call=lambda: load_model(sparse_7b, device="cuda", dtype="float32", weights="materialized"))


# ---- the CLI passes the mode through, and a load that cannot fit is one line and exit status 2 ------------------

@pytest.mark.parametrize("command", [["ask", "Hi"], ["chat"], ["logits", "Hi", "--out", "x.safetensors"]])
def test_cli_dtype_and_weights_on_every_loading_command(monkeypatch, command):
    from minillava import cli, commands
    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise DeviceError("stop here")
    monkeypatch.setattr(commands, "load", fake_load)
    assert cli.main(command + ["--dtype", "float32", "--weights", "materialized"]) == 2
    assert seen["dtype"] == "float32" and seen["weights"] == "materialized"
    assert cli.main(command) == 2 and seen["dtype"] is None and seen["weights"] == "stored"


def test_cli_verify_passes_the_mode(monkeypatch):
    from minillava import cli, commands
    seen = {}

    def fake_verify(folder, **kwargs):
        seen.update(kwargs)
        raise DeviceError("stop here")
    monkeypatch.setattr(commands, "verify", fake_verify)
    assert cli.main(["verify", "folder", "--dtype", "float32", "--weights", "materialized"]) == 2
    assert seen["dtype"] == "float32" and seen["weights"] == "materialized"


def test_cli_memory_error_is_one_line(monkeypatch, capsys, sparse_7b):
    from minillava import cli
    fake_available(monkeypatch, 10e9)
    assert cli.main(["ask", "--model", str(sparse_7b), "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minillava: error: ") and "10.0 GB are available" in err
