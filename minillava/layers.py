"""Reading the model for its math? Read `Linear` as `nn.Linear` and `Embedding` as `nn.Embedding`.

Building blocks the model files share that are not part of the model's math: how a layer is
built and stored, never what it computes.

`Linear` and `Embedding` are nn.Linear and nn.Embedding, with one addition: their weight may stay as the
checkpoint stores it (float16 or bfloat16, memory-mapped from the file, never copied) while the model
computes in float32, and is then widened to float32 as it is used (an embedding's rows by the model). Which
weights stay stored is decided by minillava/loading.py; how they are widened, exactly and fast, is the rest of
this file, below the two classes.
"""
import os
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F


class Linear(nn.Linear):
    """nn.Linear whose weight may be stored in a narrower dtype than its input (see linear_widened)."""

    def forward(self, x):
        if self.weight.dtype == x.dtype:  # float32 weights (a demo trains them) or a half-precision model
            return F.linear(x, self.weight, self.bias)
        return linear_widened(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding without the random init on the meta device; its rows come in the table's dtype (the model
    converts just the rows it looks up: `Llava.embed_tokens`)."""

    def reset_parameters(self):
        # no random init on the meta device: it would only cost time (torch's meta normal_ imports
        # torch._dynamo, ~2 s), since a checkpoint overwrites every weight anyway
        if not self.weight.is_meta:
            super().reset_parameters()


# --- Widening a stored weight as it is used ---------------------------------------------------------------
#
# A float16 or bfloat16 value converts to float32 exactly, so a product over the whole converted matrix is the
# very call F.linear(x, w.float(), b) makes, bit for bit. A prompt (many rows of input: the product is bound by
# arithmetic) does just that, converting into one reused buffer.
#
# A decode step (a few rows of input) is bound by memory: converting the whole matrix would write a float32
# copy and read it back, 10 bytes moved per weight where float32 weights move 4. Instead the weight is cut into
# blocks of rows that fit a core's L2 cache, each multiplied while it is still there: 2 bytes per weight come
# from memory. A team of threads, as many as torch uses, shares the blocks: each runs torch on one thread and
# takes the next block as soon as it has finished one, and the caller waits once per matrix. Not torch's own
# threads: with them each block's conversion and product are parallel regions that end when their slowest
# thread does, hundreds a token, and beside one busy process (a thread often descheduled) the 7b-width slice
# decoded at a tenth of its float32 speed (benchmarks/slice7b.py). The team's threads never wait for each
# other; a descheduled one holds up its one block.
#
# Whether the BLAS sums a block's dot products in the order it uses for the whole matrix depends on its build,
# the thread count and the shapes (MKL does for whole multiples of 64 rows, not for a ragged 47; torch 2.13's
# MKL on 3, 5 or 6 threads sums some rows of the whole matrix in another order), so the first call of each
# shape computes both and keeps the blocks only where they agree bit for bit; elsewhere it converts the whole
# matrix. On a GPU the whole matrix is always converted at once.

BLOCK_BYTES = 2**20  # one thread's block of float32 rows: well within a core's L2 cache (1-2 MB on current x86)
ROWS = 64  # blocks are whole multiples of 64 rows (a ragged remainder is the last block only)
DECODE_ROWS = 16  # inputs of at most this many rows (tokens x batch) are multiplied block by block
_blocks_agree = {}  # (N, K, block, rows of x, dtypes, bias, threads) -> block-wise == whole, measured once
_buffers = threading.local()  # one buffer per thread and device: two threads never share a block


def linear_widened(x, weight, bias=None):
    """F.linear(x, weight.to(x.dtype), bias), bit for bit, without materialising the converted weight."""
    if torch.is_grad_enabled() and x.requires_grad:  # autograd through a whole converted copy (rare: tests, probes)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    N, K = weight.shape
    x2 = x.reshape(-1, K)  # (M, K): F.linear folds the leading dimensions the same way
    rows = N
    block = block_rows(K, x.element_size())
    if x.device.type == "cpu" and x2.shape[0] <= DECODE_ROWS and block < N:
        key = (N, K, block, x2.shape[0], weight.dtype, x.dtype, bias is not None, torch.get_num_threads())
        if key not in _blocks_agree:  # the first call of this shape: measure, answer with the whole product
            whole = _product(x2, weight, bias, N)
            _blocks_agree[key] = torch.equal(_product(x2, weight, bias, block), whole)
            return whole.view(*x.shape[:-1], N)
        rows = block if _blocks_agree[key] else N
    return _product(x2, weight, bias, rows).view(*x.shape[:-1], N)


def block_rows(K, element_size):
    """The rows of one block of a weight with K columns: whole multiples of ROWS, about BLOCK_BYTES widened."""
    return ROWS * max(1, round(BLOCK_BYTES / (K * element_size * ROWS)))


def _product(x2, weight, bias, rows):
    """x2 @ weight.T (+ bias) for x2 (M, K), the weight widened `rows` rows at a time: by a team of threads where
    there are several blocks and several torch threads, else in this thread."""
    y = x2.new_empty(x2.shape[0], weight.shape[0])  # (M, N)
    threads = torch.get_num_threads()
    # a team needs torch built with OpenMP (its usual build), where each thread keeps its own thread count
    if rows < weight.shape[0] and threads > 1 and torch.backends.openmp.is_available():
        with _teams_lock:
            if threads not in _teams:
                _teams[threads] = _Team(threads)
            team = _teams[threads]
        team.run(x2, weight, bias, y, rows)
    else:
        _widen_multiply(x2, weight, bias, y, iter(range(0, weight.shape[0], rows)), rows)
    return y


def _widen_multiply(x2, weight, bias, y, starts, rows):
    """For each start taken from `starts`: widen rows start:start + rows into this thread's buffer, multiply."""
    N, K = weight.shape
    rows = min(rows, N)
    full = _buffer(rows * K, x2.device, x2.dtype)[:rows * K].view(rows, K)
    for start in starts:
        n = min(rows, N - start)
        block = full if n == rows else full[:n]  # (n, K)
        block.copy_(weight.narrow(0, start, n))  # exact
        out = y.narrow(1, start, n)  # (M, n)
        if bias is None:
            torch.mm(x2, block.t(), out=out)
        else:  # addmm is what F.linear runs with a bias: the same rounding
            torch.addmm(bias.narrow(0, start, n).to(x2.dtype), x2, block.t(), out=out)


def _buffer(numel, device, dtype):
    key = (device, dtype)
    buffers = _buffers.__dict__.setdefault("by_device", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buffers.pop(key, None)  # the old buffer goes before the larger one is allocated
        buf = buffers[key] = torch.empty(numel, device=device, dtype=dtype)
    return buf


class _Team:
    """`n` threads, each running torch on one thread, that share the blocks of one product at a time."""

    def __init__(self, n):
        self.n, self.lock = n, threading.Lock()
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        threads, ready = torch.get_num_threads(), threading.Barrier(n + 1)
        self.workers = [threading.Thread(target=self._work, args=(ready,), name="minillava-widen", daemon=True)
                        for _ in range(n)]
        for worker in self.workers:
            worker.start()
        ready.wait()
        torch.set_num_threads(threads)  # a worker's set_num_threads(1) also set torch's default for new threads

    def run(self, x2, weight, bias, y, rows):
        with self.lock:  # one product at a time
            self.job, self.error = (x2, weight, bias, y, _Shared(range(0, weight.shape[0], rows)), rows), None
            for _ in range(self.n):
                self.go.release()
            for _ in range(self.n):
                self.done.acquire()
            error, self.job, self.error = self.error, None, None
        if error is not None:
            raise error

    def _work(self, ready):
        torch.get_num_threads()  # torch sets up a thread's count on its first call: let it, then set one
        torch.set_num_threads(1)
        ready.wait()
        while True:
            self.go.acquire()
            try:
                _widen_multiply(*self.job)
            except BaseException as e:  # raised again in the caller
                self.error = e
            self.done.release()


class _Shared:
    """An iterator that several threads take from, each item going to one of them."""

    def __init__(self, items):
        self.items, self.lock = iter(items), threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            return next(self.items)


def _forget_teams():  # in a forked child: it has none of its parent's threads
    global _teams, _teams_lock
    _teams, _teams_lock = {}, threading.Lock()  # torch threads -> _Team, made on first use


_forget_teams()
os.register_at_fork(after_in_child=_forget_teams)
