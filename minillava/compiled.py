"""Compiled decoding (opt-in: `generate(..., compile=True)`, `ChatSession(..., compile=True)`, `--compile`):
the one-token step run by torch.compile over a static KV cache, the prompt step left eager.

Why: at batch 1 a decode step multiplies each weight matrix by one row. On a GPU each of those small products,
norms and rotations is its own kernel launch, and eager PyTorch spends more time launching them than the GPU
spends reading the weights (README "Speed"). torch.compile fuses the elementwise work into fewer kernels and,
with mode="reduce-overhead", records the whole step once as a CUDA graph and replays it with one launch. This
is gpt-fast's recipe (github.com/pytorch-labs/gpt-fast, its decode_one_token), on minillava's own step.

What a compiled step needs, and how minillava gives it:
- Fixed shapes, so one graph serves every token: the cache is a StaticKVCache (minillava/llama.py) of a fixed
  length, the step attends over all of it with a mask (B, cache length) whose later columns are 0, and its
  position is a tensor (written with index_copy_), not a Python int the graph would be specialised on.
- Fixed addresses for CUDA graphs: the cache is marked static (StaticKVCache); the mask, the token and the
  position are small inputs the graph copies into its own buffers at each replay.
- One graph: the stored-weights `Linear` (minillava/layers.py) reads torch.get_num_threads() and, on the first
  call of a shape, compares two products with torch.equal; dynamo breaks the graph at both (measured on a float16
  2048 x 2048 weight under float32: fullgraph refused, 4 breaks a call without it). So compiled decoding wants
  every weight in the compute dtype (`weights="materialized"`, or a float16/bfloat16 model); `decoder` says so.

It compiles once per shape: a new batch size, cache length, dtype or device compiles again (`dynamic=False`: each
shape its own static graph); tokens, turns and generate calls of one shape reuse it, and so does another model of
the same config (dynamo keeps the graph with the function; the weights are its inputs). torch keeps at most
torch._dynamo.config.recompile_limit (8) versions of the step: past them it runs uncompiled, with a warning.
Compiled kernels may fuse and round differently from eager ones: the greedy tokens are the eager path's, the
logits within float32 rounding (tests/test_compiled.py). The exact reference stays the eager path.
"""
import os
import shutil
import time
import weakref

import torch

from .errors import GenerationError
from .layers import Linear
from .loading import KV_POSITIONS

_decoders = weakref.WeakKeyDictionary()  # model -> its CompiledDecoder


class CompiledDecoder:
    """A decode step (`generation.decode_step`) compiled for one model; called like it, the position an int."""

    def __init__(self, model, step):
        self.cuda_graphs = model.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None  # CUDA graphs on a GPU; on CPU the default mode
        self.fn = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
        self.position = torch.zeros(1, dtype=torch.long, device=model.device)  # (1,): updated in place
        self.compile_seconds = {}  # (batch size, cache length) -> seconds the first step of that shape took

    def __call__(self, model, tokens, attention_mask, cache, start_pos):
        """tokens (B,) at cache position start_pos; attention_mask (B, cache.max_len) -> logits (B, vocab)."""
        self.position.fill_(start_pos)
        if self.cuda_graphs:  # the previous step's outputs are read: the graph may overwrite them now
            torch.compiler.cudagraph_mark_step_begin()
        shape = (tokens.shape[0], cache.max_len)
        if shape in self.compile_seconds:
            return self.fn(model, tokens, attention_mask, cache, self.position)
        start = time.perf_counter()  # the first step of a shape compiles: timed, not hidden
        logits = self.fn(model, tokens, attention_mask, cache, self.position)
        self.compile_seconds[shape] = time.perf_counter() - start
        return logits



def cache_length(needed, limit):
    """The cache length of a compiled run needing `needed` positions: rounded up to a multiple of KV_POSITIONS
    (one shape, so one graph, for every prompt up to that length), within the context length `limit`."""
    return min(limit, -(-needed // KV_POSITIONS) * KV_POSITIONS)


def decoder(model, step):
    """The model's compiled `step`, made on first use (checked first: a GenerationError says why it cannot be)."""
    if model not in _decoders:
        check_compilable(model)
        _decoders[model] = CompiledDecoder(model, step)
    return _decoders[model]


def check_compilable(model):
    if not torch._dynamo.is_dynamo_supported():
        raise GenerationError("compile=True: torch.compile does not support this Python or platform; "
                              "generate without compile (the eager path is the exact reference anyway)")
    if model.device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        raise GenerationError(f"compile=True on the CPU needs a C++ compiler, and {os.environ.get('CXX', 'g++')} "
                              f"was not found: install one (gcc) or set CXX, or generate without compile")
    stored = [(name, m.weight.dtype) for name, m in model.language_model.named_modules()
              if isinstance(m, Linear) and m.weight.dtype != model.dtype]
    if stored:
        name, dtype = stored[0]
        raise GenerationError(f"compile=True: {len(stored)} weights of the decoder (language_model.{name}.weight, "
                              f"...) are kept in {dtype} and widened to {model.dtype} as used (weights='stored'), "
                              f"which torch.compile cannot trace; load with weights='materialized' "
                              f"(--weights materialized) or compute in {dtype} (--dtype)")


def compile_seconds(model):
    """{(batch size, cache length): seconds} the model's compiled decode step took to compile each shape
    (its first step of that shape, run included); {} before any."""
    return dict(_decoders[model].compile_seconds) if model in _decoders else {}
