"""Reading the model for its math? Read `Linear` as `nn.Linear` and `Embedding` as `nn.Embedding`.

Building blocks the model files share that are not part of the model's math: how a layer is
built and stored, never what it computes.

Storage and compute apart. A llava-hf checkpoint stores its weights in float16 or bfloat16; the exact
reference computes in float32. Converting every weight to float32 at load doubles the memory (28 GB for
the 7b). Instead `Linear` and `Embedding` may keep their weight as stored (memory-mapped from the file,
never copied) and compute in the dtype of their input, widening the weight as it is used:

- `Linear` converts its weight into a reused float32 buffer and multiplies: a float16 or bfloat16 value
  converts to float32 exactly, so one product over the whole converted matrix is the very call
  `F.linear(x, w.float(), b)` makes, bit for bit (tests/test_layers.py checks).
  A decode step (a few rows of input) is bound by memory, not arithmetic: there the weight is converted a
  cache-sized block of rows at a time and each block multiplied as it is converted, so the step reads half
  the bytes of a float32 weight and never writes a whole float32 copy. Whether the BLAS sums a block's dot
  products in the order it uses for the whole matrix depends on its build, the thread count and the shapes
  (MKL with 2 threads does for blocks of 64 rows; MKL with 16 threads did not for a one-token product), so
  the first call of each shape computes both and keeps the blocks only where they agree bit for bit.
  On a GPU the whole matrix is always converted at once (one conversion kernel, then one matrix product).
- `Embedding` looks rows up in the stored table; the model converts just those rows (`Llava.embed_tokens`).

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
# another order even where whole blocks agree
DECODE_ROWS = 16  # inputs of at most this many rows (tokens x batch) are multiplied block by block
_buffers = threading.local()  # one buffer per thread and device: two threads never share a block
_blocks_agree = {}  # (N, K, block, rows of x, dtypes, bias, threads) -> block-wise == whole, measured once


def _buffer(numel, device, dtype):
    key = (device, dtype)
    buffers = _buffers.__dict__.setdefault("by_device", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buffers.pop(key, None)  # the old buffer goes before the larger one is allocated
        buf = buffers[key] = torch.empty(numel, device=device, dtype=dtype)
    return buf


def _product(x2, weight, bias, rows):
    """x2 @ weight.T (+ bias) for x2 (M, K), the weight widened `rows` rows at a time into the buffer."""
    N, K = weight.shape
    y = x2.new_empty(x2.shape[0], N)
    buf = _buffer(rows * K, x2.device, x2.dtype)
    for start in range(0, N, rows):
        n = min(rows, N - start)
        block = buf[:n * K].view(n, K).copy_(weight[start:start + n])  # (n, K), exact widening
        if bias is None:
            torch.mm(x2, block.t(), out=y[:, start:start + n])
        else:  # addmm is what F.linear runs with a bias: the same rounding
            torch.addmm(bias[start:start + n].to(x2.dtype), x2, block.t(), out=y[:, start:start + n])
    return y


def linear_widened(x, weight, bias=None):
    """F.linear(x, weight.to(x.dtype), bias), bit for bit, without materialising the converted weight."""
    if torch.is_grad_enabled() and x.requires_grad:  # autograd through a whole converted copy (rare: tests, probes)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    N, K = weight.shape
    x2 = x.reshape(-1, K)  # (M, K): F.linear folds the leading dimensions the same way
    rows = N
    block = ROWS * max(1, round(BLOCK_BYTES / (K * x.element_size() * ROWS)))
    if x.device.type == "cpu" and x2.shape[0] <= DECODE_ROWS and block < N:
        key = (N, K, block, x2.shape[0], weight.dtype, x.dtype, bias is not None, torch.get_num_threads())
        if key not in _blocks_agree:  # the first call of this shape: measure, answer with the whole product
            whole = _product(x2, weight, bias, N)
            _blocks_agree[key] = torch.equal(_product(x2, weight, bias, block), whole)
            return whole.view(*x.shape[:-1], N)
        rows = block if _blocks_agree[key] else N
    return _product(x2, weight, bias, rows).view(*x.shape[:-1], N)


class Linear(nn.Linear):
    """nn.Linear whose weight may be stored in a narrower dtype than its input (see the module docstring)."""

    def forward(self, x):
        if self.weight.dtype == x.dtype:
            return F.linear(x, self.weight, self.bias)
        return linear_widened(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding without the random init on the meta device; its rows come in the table's dtype."""

    def reset_parameters(self):
        if not self.weight.is_meta:
            super().reset_parameters()
