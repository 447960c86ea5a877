"""Generation on token ids: run the prompt once (prefill), then one token at a time through the KV cache.

Three pieces a reader can take one at a time: `prefill` (the prompt, image included, in one pass),
`decode_step` (one new token per row), `sample` (greedy, temperature, top-k, top-p). `generate_tokens`
strings them together and `generate` collects what it yields: greedy tokens identical to transformers'
`generate`, positions as it computes them, EOS handling as it does. Text (streaming an answer, a chat
session) is minillava/session.py.

Each pass is told where its tokens go in the cache (`start_pos`, gpt-fast's `input_pos`): the loop here
keeps that count, the cache is storage. A decode step gets one mask allocated for the whole run and the
position of its token, so from step to step its inputs keep their shapes, as a compiled step needs.
"""
import math
from numbers import Integral, Real

import torch

from . import compiled
from .errors import GenerationError, PromptError
from .llama import StaticKVCache
from .llava import check_inputs


def positions_from_mask(attention_mask):
    """Position of each token counted over real tokens only: a left-padded row starts at 0 at its
    first real token, as transformers' generate computes them (cumsum(mask) - 1, pads set to 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def prefill(model, input_ids, pixel_values, attention_mask, cache, start_pos=0):
    """Run T prompt tokens (B, T) through the model, writing their keys and values into the cache at
    start_pos..start_pos+T-1; return the last position's logits (B, vocab) in fp32.

    attention_mask (B, >= start_pos + T) covers what the cache already holds (a chat turn continues a
    conversation) and the new tokens; columns after them are not read.
    """
    mask = attention_mask[:, :start_pos + input_ids.shape[1]]
    position_ids = positions_from_mask(mask)[:, start_pos:]
    logits = model(input_ids, pixel_values, attention_mask=mask, position_ids=position_ids, cache=cache,
                   start_pos=start_pos, logits_to_keep=1)
    return logits[:, -1].float()  # only the last position is projected onto the vocabulary


@torch.no_grad()
def decode_step(model, tokens, attention_mask, cache, start_pos):
    """Feed one new token per row (B,) at cache position start_pos; return the next logits (B, vocab) in fp32.

    attention_mask (B, >= start_pos + 1): 1 for the real tokens among positions 0..start_pos, the new
    one included; columns after it are not read, so one mask serves the whole run.
    A compiled step (minillava/compiled.py) passes start_pos as a (1,) tensor and a StaticKVCache: the
    whole mask is read then, (B, cache length), 0 after the new token, and attention runs over all of it.
    """
    mask = attention_mask if torch.is_tensor(start_pos) else attention_mask[:, :start_pos + 1]
    position_ids = mask.long().sum(-1, keepdim=True) - 1  # (B, 1): the row's real tokens before this one
    # a generated token is only embedded: even an <image> id gets no image features here (as in transformers)
    embeds = model.embed_tokens(tokens[:, None])  # (B, 1, D)
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, cache=cache,
                   start_pos=start_pos)
    return logits[:, -1].float()


def sample(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None):
    """Pick the next token from logits (B, vocab): argmax when temperature is 0, else sample from
    softmax(logits / temperature) restricted to the top_k tokens and to the smallest set whose
    probability reaches top_p (Holtzman et al. 2019, "nucleus sampling"). The settings are those
    `check_settings` accepts (generate_tokens checks them once, not at every step)."""
    if temperature == 0:
        return logits.argmax(-1)  # ties go to the lowest id, as in transformers
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def check_settings(max_new_tokens, temperature, top_k, top_p, compile=False):
    """A GenerationError naming the first setting outside its range (NaN and infinity included)."""
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens = {max_new_tokens!r}, expected an integer >= 1")
    if not is_number(temperature) or not 0 <= temperature < math.inf:
        raise GenerationError(f"temperature = {temperature!r}, expected a finite number >= 0 (0 means greedy)")
    if not is_int(top_k) or top_k < 0:
        raise GenerationError(f"top_k = {top_k!r}, expected an integer >= 0 (0 means no top-k filtering)")
    if not is_number(top_p) or not 0 < top_p <= 1:
        raise GenerationError(f"top_p = {top_p!r}, expected a number in (0, 1] (1 means no top-p filtering)")
    if not isinstance(compile, bool):  # "no" or 1 would pass a truth test and compile
        raise GenerationError(f"compile = {compile!r}, expected True or False")


def is_int(x):  # numpy integers too; True and False are not counts
    return isinstance(x, Integral) and not isinstance(x, bool)


def is_number(x):
    return isinstance(x, Real) and not isinstance(x, bool)


def end_tokens(config, eos_token_id=None, pad_token_id=None):
    """The ids that end a row, and the id a finished row yields from then on.

    Each is the one given, else the model config's (text_config.eos_token_id, pad_token_id). Without
    a pad id a finished row repeats the first end id, as transformers' generate does; without an end
    id every row runs to max_new_tokens.
    """
    eos = config.text_config.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        ends = []
    elif is_int(eos):
        ends = [eos]
    else:
        ends = eos
    vocab = config.text_config.vocab_size
    if not isinstance(ends, (list, tuple)) or not all(is_int(i) and 0 <= i < vocab for i in ends):
        raise GenerationError(f"eos_token_id = {eos!r}, expected a token id or a list of token ids "
                              f"(0 <= id < {vocab}, the vocabulary size)")
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    if pad is None:
        pad = ends[0] if ends else 0
    if not is_int(pad) or not 0 <= pad < vocab:
        raise GenerationError(f"pad_token_id = {pad!r}, expected a token id (0 <= id < {vocab})")
    return [int(i) for i in ends], int(pad)


def generate_tokens(model, input_ids, pixel_values=None, attention_mask=None, *, max_new_tokens=32,
                    temperature=0.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=None, generator=None,
                    cache=None, start_pos=0, compile=False):
    """Check the request, run the prompt, and return an iterator over the next token of every row, (B,).

    The engine behind `generate`, streaming and chat sessions. Every check, the cache and the prefill
    run in this call: a mistake is raised here, before any token, never by the iterator.
    eos_token_id, pad_token_id: see `end_tokens`; a row that has produced an end id yields the pad id
    from then on, and iteration stops when every row has. generator: a torch.Generator for sampling.
    By default a cache is allocated for exactly prompt + max_new_tokens positions; a chat session passes
    its own, with `start_pos` the positions it already holds of the conversation (the prompt's first
    start_pos tokens, which attention_mask (B, start_pos + T) then covers too).
    compile: run the one-token step compiled (minillava/compiled.py), over a StaticKVCache; the prompt stays
    eager. The first step of a shape compiles it, in compiled.compile_seconds(model).
    """
    check_settings(max_new_tokens, temperature, top_k, top_p, compile)
    if not is_int(start_pos) or start_pos < 0:
        raise GenerationError(f"start_pos = {start_pos!r}, expected an integer >= 0 (what the cache holds)")
    eos, pad = end_tokens(model.config, eos_token_id, pad_token_id)
    check_inputs(model.config, input_ids, pixel_values)  # a tensor of ids, before its shape is read
    B, T = input_ids.shape
    end = start_pos + T + max_new_tokens
    limit = model.config.text_config.max_position_embeddings
    if end > limit:
        fix = f"max_new_tokens {limit - start_pos - T} is the most that fits" if start_pos + T < limit else \
            "the prompt alone fills it"
        raise PromptError(f"prompt of {start_pos + T} tokens + max_new_tokens {max_new_tokens} = {end} exceeds the "
                          f"context length {limit} (text_config.max_position_embeddings): {fix}")
    if attention_mask is None:
        attention_mask = torch.ones(B, start_pos + T, dtype=torch.long)
    if tuple(attention_mask.shape) != (B, start_pos + T):
        raise PromptError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, start_pos + T)} "
                          f"(batch, cached + new tokens)")
    if cache is None and start_pos:
        raise GenerationError(f"start_pos = {start_pos} without a cache: the first {start_pos} positions would be "
                              f"empty (pass the cache that holds them)")
    decode = compiled.decoder(model, decode_step) if compile else decode_step
    if cache is None and compile:  # a length of fixed steps, so that runs of other lengths reuse the graph
        cache = model.new_cache(B, compiled.cache_length(T + max_new_tokens, limit), static=True)
    elif cache is None:
        cache = model.new_cache(B, T + max_new_tokens)  # allocated once for the whole run
    elif cache.batch_size != B or cache.max_len < end - 1:  # the last token is never fed back
        raise GenerationError(f"the cache holds {cache.batch_size} row(s) x {cache.max_len} positions; this run "
                              f"needs {B} x {end - 1} (model.new_cache(batch_size, max_len))")
    elif compile and not isinstance(cache, StaticKVCache):
        raise GenerationError("compile=True runs over a static cache: pass model.new_cache(batch_size, max_len, "
                              "static=True)")
    width = cache.max_len if compile else end  # a compiled step reads the whole mask, as wide as its cache
    mask = torch.zeros(B, width, dtype=torch.long, device=model.device)  # the whole run's mask, filled as it goes
    mask[:, :start_pos + T] = attention_mask
    logits = prefill(model, input_ids, pixel_values, mask, cache, start_pos)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    return decode_loop(model, logits, mask, cache, start_pos + T, max_new_tokens, sampling, eos, pad, decode)


def decode_loop(model, logits, mask, cache, position, max_new_tokens, sampling, eos, pad, decode=decode_step):
    """generate_tokens' loop: sample each row's token, yield it, feed it back at the next position."""
    eos = torch.tensor(eos, dtype=torch.long, device=logits.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for step in range(max_new_tokens):
        token = sample(logits, **sampling)
        token = torch.where(done, torch.full_like(token, pad), token)  # a finished row yields the pad id
        done = done | torch.isin(token, eos)
        yield token
        if step == max_new_tokens - 1 or bool(done.all()):
            return
        mask[:, position] = 1
        logits = decode(model, token, mask, cache, position)
        position += 1


def generate(model, input_ids, pixel_values=None, attention_mask=None, **settings):
    """The new tokens (B, new) after the prompt; greedy unless temperature > 0.

    settings: those of `generate_tokens` (max_new_tokens=32, temperature, top_k, top_p, eos_token_id,
    pad_token_id, generator, compile).
    """
    return torch.stack(list(generate_tokens(model, input_ids, pixel_values, attention_mask, **settings)), dim=1)
