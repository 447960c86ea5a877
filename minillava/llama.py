"""The Llama decoder (Vicuna-v1.5 in LLaVA-1.5; Mistral in bakLlava), with grouped-query attention
and a preallocated KV cache.

Touvron et al. 2023, "Llama 2"; Su et al. 2021, "RoFormer" (rotary embeddings); Ainslie et al. 2023
(grouped-query attention); Jiang et al. 2023, "Mistral 7B" (sliding window). Matches
`LlamaForCausalLM` / `MistralForCausalLM` in transformers' models/llama/modeling_llama.py.
Module names mirror the checkpoint keys `language_model.model.*` and `language_model.lm_head`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TextConfig
from .errors import GenerationError
from .layers import Embedding, Linear


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in fp32: in fp16 the mean of squares of 4096 activations overflows or loses digits.
        # Cast back *before* the weight multiply, exactly as LlamaRMSNorm does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_cos_sin(position_ids, head_dim, theta, dtype):
    """cos and sin of the rotation angles, (B, T, head_dim), computed in fp32 then cast.

    fp32 matters: in bf16 a position like 3000 times a frequency near 1 loses the fractional
    part of the angle. Frequencies are recomputed here rather than kept in a buffer so that
    `model.to(torch.float16)` can never round them (a known transformers pitfall).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device)
                                .float() / head_dim))  # (head_dim / 2,)
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, head_dim / 2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, head_dim): the half-split ("NeoX") layout
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x, cos, sin):  # x: (B, n_heads, T, head_dim); cos, sin: (B, T, head_dim)
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer, allocated once for the whole run (no torch.cat per token).

    Stores the n_kv_heads un-repeated heads: with GQA that is n_heads / n_kv_heads times smaller.
    The cache is storage only: each forward pass says where its T tokens go (`start_pos`, as in
    Meta's Llama code; gpt-fast's `input_pos`), so the one who runs the model (minillava/generation.py)
    is the one who counts the positions.
    """

    def __init__(self, n_layers, shape, device, dtype):  # shape: (B, n_kv_heads, max_len, head_dim)
        # uninitialised (no pass to zero it): attention only ever reads the positions written
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size, self.max_len = shape[0], shape[2]

    def update(self, layer, start_pos, k, v):  # k, v: (B, n_kv_heads, T, head_dim)
        """Write the T new positions at start_pos; return the keys and values of positions 0..start_pos+T-1."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise GenerationError(f"the KV cache holds {self.max_len} positions; {k.shape[2]} were written at "
                                  f"position {start_pos}: start from a cache of at least {end} "
                                  f"(new_cache(batch_size, max_len))")
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, n_kv_heads, end, head_dim)

    def resized(self, max_len, keep):
        """A cache with room for max_len positions holding this one's first `keep` (chat sessions grow theirs)."""
        B, n_kv, _, hd = self.k[0].shape
        new = type(self)(len(self.k), (B, n_kv, max_len, hd), self.k[0].device, self.k[0].dtype)
        for old, fresh in zip(self.k + self.v, new.k + new.v):
            fresh[:, :, :keep] = old[:, :, :keep]
        return new


class StaticKVCache(KVCache):
    """A cache a compiled decode step can run over (gpt-fast's static cache; minillava/compiled.py).

    Its shapes never change, so neither does the step's graph: a step given its position as a tensor
    writes there with index_copy_ and attends over every position of the cache, those after its own
    masked out. Masked, yet read: memory never written could hold a NaN, and 0 x NaN is NaN, so the
    cache starts zero-filled. A prompt (start_pos an int) is written as in KVCache.
    """

    def __init__(self, n_layers, shape, device, dtype):
        super().__init__(n_layers, shape, device, dtype)
        for t in self.k + self.v:
            t.zero_()
            torch._dynamo.mark_static_address(t)  # a CUDA graph writes here in place, never into a copy

    def update(self, layer, start_pos, k, v):
        if not torch.is_tensor(start_pos):
            return super().update(layer, start_pos, k, v)
        self.k[layer].index_copy_(2, start_pos, k)  # start_pos: (T,) positions
        self.v[layer].index_copy_(2, start_pos, v)
        return self.k[layer], self.v[layer]  # (B, n_kv_heads, max_len, head_dim)


# SDPA shares each key/value head among its group of query heads itself from torch 2.5 (enable_gqa); before that
# the heads are repeated first. The two give the same numbers (tests/test_torch_floor.py).
SDPA_GQA = torch.__version__ >= (2, 5)


def repeat_kv(x, n_rep):
    """(B, n_kv_heads, S, head_dim) -> (B, n_kv_heads * n_rep, S, head_dim), each head n_rep times in a row, as
    transformers' repeat_kv does."""
    B, n_kv_heads, S, head_dim = x.shape
    return x[:, :, None].expand(B, n_kv_heads, n_rep, S, head_dim).reshape(B, n_kv_heads * n_rep, S, head_dim)


class LlamaAttention(nn.Module):
    def __init__(self, config: TextConfig, layer_idx):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        D, b = config.hidden_size, config.attention_bias
        self.q_proj = Linear(D, self.n_heads * self.head_dim, bias=b)
        self.k_proj = Linear(D, self.n_kv_heads * self.head_dim, bias=b)
        self.v_proj = Linear(D, self.n_kv_heads * self.head_dim, bias=b)
        self.o_proj = Linear(self.n_heads * self.head_dim, D, bias=b)
        self.layer_idx = layer_idx

    def forward(self, x, cos, sin, mask, cache, start_pos=0):  # x: (B, T, D)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, start_pos, k, v)  # (B, n_kv_heads, S, head_dim), S = start_pos + T
        # GQA: each group of n_heads / n_kv_heads consecutive query heads shares one KV head
        groups, gqa = self.n_heads // self.n_kv_heads, {}
        if groups > 1 and SDPA_GQA:
            gqa = {"enable_gqa": True}
        elif groups > 1:
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, n_heads, S, head_dim)
        if mask is None:  # no padding, no window: plain causal (or a single new token, which sees everything)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, **gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


# text_config.hidden_act -> the function, as transformers' ACT2FN defines it: "silu" in every LLaVA-1.5 checkpoint;
# transformers' own tiny LLaVA test model uses "gelu" (the exact, erf one)
ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu,
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class LlamaMLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)), silu being text_config.hidden_act."""

    def __init__(self, config: TextConfig):
        super().__init__()
        D, hidden, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = Linear(D, hidden, bias=b)
        self.up_proj = Linear(D, hidden, bias=b)
        self.down_proj = Linear(hidden, D, bias=b)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer_idx):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, start_pos=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, start_pos=None):
        """inputs_embeds (B, T, D) -> the final hidden states (B, T, D), normalised.

        cache, start_pos: the T new keys and values are written into `cache` at positions
        start_pos..start_pos+T-1 and the queries attend to positions 0..start_pos+T-1; a pass with a
        cache must say where its tokens go (0 for a prompt). attention_mask: (B, S), S = start_pos + T,
        1 for real tokens, 0 for padding. position_ids default to start_pos + arange(T), like
        transformers' forward (generation passes cumsum(mask) - 1 instead, see generation.py).
        With a StaticKVCache, start_pos may be a tensor of the T positions (a compiled step): the queries then
        attend over the whole cache, attention_mask (B, cache.max_len) 0 wherever nothing is written yet.
        """
        B, T, _ = inputs_embeds.shape
        if start_pos is None:
            if cache is not None:  # a default of 0 would silently overwrite the cache's first positions
                raise GenerationError("a forward pass with a cache needs start_pos: where its tokens go in the "
                                      "cache, i.e. how many positions earlier passes wrote (0 for the prompt)")
            start_pos = 0
        if position_ids is None:
            position_ids = torch.arange(start_pos, start_pos + T, device=inputs_embeds.device).expand(B, T)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype)
        if torch.is_tensor(start_pos):  # a static step (StaticKVCache): over every position of the cache
            mask = allowed_keys(start_pos, cache.max_len, self.config.sliding_window, attention_mask)
        else:
            mask = attention_mask_4d(attention_mask, start_pos, T, self.config.sliding_window, inputs_embeds.device)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, start_pos)
        return self.norm(x)


def attention_mask_4d(attention_mask, start, T, sliding_window, device):
    """Boolean (B, 1, T, S) mask, True where query start+t may attend to key s (S = start + T), or None.

    Allowed iff s <= q (causal), key s is not padding, and s > q - window (Mistral's sliding window).
    None means "plain causal", which lets SDPA use its fastest kernel. SDPA's is_causal aligns the
    triangle to the top left, which is only right when the queries start at key 0 (or T is 1, and
    the single query sees every key), so a chunk appended to a filled cache needs the explicit mask.
    """
    S = start + T
    padded = attention_mask is not None and not bool(attention_mask[:, :S].all())
    windowed = sliding_window is not None and S > sliding_window
    if not padded and not windowed and (start == 0 or T == 1):
        return None
    return allowed_keys(torch.arange(start, S, device=device), S, sliding_window if windowed else None,
                        attention_mask[:, :S] if padded else None)


def allowed_keys(positions, S, sliding_window=None, attention_mask=None):
    """The mask itself, (B or 1, 1, T, S), for queries at `positions` (T,) over keys 0..S-1; attention_mask
    (B, S) or None (no padding). With no data-dependent branch, a compiled step can trace it."""
    q = positions[:, None]  # (T, 1)
    s = torch.arange(S, device=positions.device)[None, :]  # (1, S)
    allowed = s <= q
    if sliding_window is not None:
        allowed = allowed & (s > q - sliding_window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    # A left-pad query sees no key at all; SDPA would return NaN there, which the next layer's
    # values would spread. Let such rows see everything (as transformers' sdpa_mask does): their
    # outputs are never read, and no real token attends to a pad.
    return allowed | ~allowed.any(-1, keepdim=True)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    def new_cache(self, batch_size, max_len, device=None, dtype=None, static=False):
        config, w = self.config, self.model.norm.weight  # the compute dtype: large weights may be stored narrower
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        return (StaticKVCache if static else KVCache)(config.num_hidden_layers, shape, device or w.device,
                                                      dtype or w.dtype)

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, start_pos=None,
                logits_to_keep=0):
        """inputs_embeds (B, T, D) -> logits (B, T', vocab) in the model dtype.

        logits_to_keep (transformers' argument): 0 keeps all positions; n keeps the last n (generation needs
        only the last); a 1-D tensor of positions keeps those (training needs only the positions it scores).
        """
        x = self.model(inputs_embeds, attention_mask, position_ids, cache, start_pos)  # (B, T, D)
        return self.lm_head(x[:, kept(logits_to_keep)])  # (B, T', vocab)


def kept(logits_to_keep):
    """transformers' logits_to_keep as an index of the position axis: n -> the last n (0 or None: all of them), a
    1-D tensor -> the positions it lists. (training.loss picks the labels of the same positions with it.)"""
    if torch.is_tensor(logits_to_keep):
        return logits_to_keep
    return slice(-logits_to_keep, None) if logits_to_keep else slice(None)
