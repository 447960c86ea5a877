"""Building blocks the model files share that are not part of the model's math: how a layer is
built and stored, never what it computes.

Storage and compute apart. A llava-hf checkpoint stores its weights in float16 or bfloat16; the exact
reference computes in float32. Converting every weight to float32 at load doubles the memory (28 GB for
the 7b). Instead `Linear` and `Embedding` may keep their weight as stored (memory-mapped from the file,
never copied) and compute in the dtype of their input, widening the weight as it is used:

- `Linear` converts its weight a block of rows at a time into one reused float32 buffer (a few MB, it
  stays in the CPU's cache) and multiplies each block as it is converted. A float16 or bfloat16 value
  converts to float32 exactly, and each output column is the same dot product over the same inputs as
  in `F.linear(x, w.float(), b)`, so the result is bit-identical to it (tests/test_layers.py checks) as long
  as the BLAS sums each block's dot products in the order it uses for the whole matrix. It did on this
  project's machine (torch 2.13, 2 threads); on a 16-thread machine with torch 2.11 a one-token product
  with 64-row blocks did not. Where bit-exactness on another machine matters, load with
  weights="materialized".
  A decode step then reads half the bytes of a float32 weight. On a GPU the block is the whole matrix
  (one conversion kernel, then one matrix product).
- `Embedding` looks rows up in the stored table and converts just those rows.

A weight already in the input's dtype (the float32 a demo trains, or a half-precision model) takes the
plain `F.linear` path, with autograd. Which weights stay stored is decided by minillava/loading.py.

`Embedding` also skips its random init on the meta device: there the init would only cost time (torch's
meta `normal_` imports torch._dynamo, ~2 s), since a checkpoint overwrites every weight anyway.
"""
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK_BYTES = 4 * 2**20  # one block of float32 rows: about the L2 caches of two cores (fewer, larger blocks
# cost fewer thread synchronisations per matrix; a block much larger than the caches spills to memory)
ROWS = 64  # blocks are whole multiples of 64 rows: MKL's kernels for a ragged remainder (47 rows, say) sum in
# another order, and the result would no longer be bit-identical to one F.linear over the whole matrix
_buffers = threading.local()  # one buffer per thread and device: two threads never share a block


def _buffer(numel, device, dtype):
    key = (device, dtype)
    buffers = _buffers.__dict__.setdefault("by_device", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, device=device, dtype=dtype)
    return buf


def linear_widened(x, weight, bias=None):
    """F.linear(x, weight.to(x.dtype), bias) without materialising the converted weight."""
    if torch.is_grad_enabled() and x.requires_grad:  # autograd through a whole converted copy (rare: tests, probes)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    N, K = weight.shape
    x2 = x.reshape(-1, K)  # F.linear folds the leading dimensions the same way
    y = x2.new_empty(x2.shape[0], N)
    rows = N if x.device.type != "cpu" else min(N, ROWS * max(1, round(BLOCK_BYTES / (K * x.element_size() * ROWS))))
    buf = _buffer(rows * K, x.device, x.dtype)
    for start in range(0, N, rows):
        n = min(rows, N - start)
        block = buf[:n * K].view(n, K).copy_(weight[start:start + n])  # (n, K), exact widening
        if bias is None:
            torch.mm(x2, block.t(), out=y[:, start:start + n])
        else:  # addmm is what F.linear runs with a bias: the same rounding
            torch.addmm(bias[start:start + n].to(x.dtype), x2, block.t(), out=y[:, start:start + n])
    return y.view(*x.shape[:-1], N)


class Linear(nn.Linear):
    """nn.Linear whose weight may be stored in a narrower dtype than its input (see the module docstring)."""

    def forward(self, x):
        if self.weight.dtype == x.dtype:
            return F.linear(x, self.weight, self.bias)
        return linear_widened(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding that returns `compute_dtype` rows (set by the loader when the table stays stored)."""

    compute_dtype = None  # None: the table's own dtype

    def reset_parameters(self):
        if not self.weight.is_meta:
            super().reset_parameters()

    def forward(self, ids):
        rows = super().forward(ids)
        return rows if self.compute_dtype is None else rows.to(self.compute_dtype)
