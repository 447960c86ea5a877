"""Generation: prefill the prompt once, then decode one token at a time through the KV cache.

Three pieces a reader can take one at a time: `prefill` (the whole prompt, image included, in one
pass), `decode_step` (one new token per sequence), `sample` (greedy, temperature, top-k, top-p).
`generate` strings them together and reproduces transformers' `generate` (greedy tokens identical,
positions as it computes them, EOS handling as it does); `stream` yields text as it is decoded;
`ChatSession` keeps a conversation's KV cache between turns.
"""
import torch

from .chat import system_message, user_message
from .errors import GenerationError, PromptError
from .images import load_image


def positions_from_mask(attention_mask):
    """Position of each token counted over real tokens only: a left-padded row starts at 0 at its
    first real token, as transformers' generate computes them (cumsum(mask) - 1, pads set to 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def prefill(model, input_ids, pixel_values, attention_mask, cache):
    """Run the prompt (B, T) through the model, filling the cache; return last-position logits (B, vocab) in fp32.

    `attention_mask` covers what the cache already holds plus the T new tokens (a chat turn
    continues a conversation), so the new tokens' positions are the last T of the mask's.
    """
    position_ids = positions_from_mask(attention_mask)[:, -input_ids.shape[1]:]
    logits = model(input_ids, pixel_values, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                   logits_to_keep=1)
    return logits[:, -1].float()  # only the last position is projected onto the vocabulary


@torch.no_grad()
def decode_step(model, tokens, attention_mask, cache):
    """Feed one new token per sequence (B,) and return the next logits (B, vocab) in fp32.

    `attention_mask` (B, S) already includes the new token; its position is the row's count of
    real tokens so far, minus one.
    """
    position_ids = attention_mask.long().sum(-1, keepdim=True) - 1  # (B, 1)
    # a generated token is only embedded: even an <image> id gets no image features here (as in transformers)
    embeds = model.embed_tokens(tokens[:, None])  # (B, 1, D)
    logits = model(None, inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
    return logits[:, -1].float()


def sample(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None):
    """Pick the next token from logits (B, vocab): argmax when temperature is 0, else sample from
    softmax(logits / temperature) restricted to the top_k tokens and to the smallest set whose
    probability reaches top_p (Holtzman et al. 2019, "nucleus sampling")."""
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


def check_settings(max_new_tokens, temperature, top_k, top_p):
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens = {max_new_tokens!r}, expected an integer >= 1")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise GenerationError(f"temperature = {temperature!r}, expected a number >= 0 (0 means greedy)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise GenerationError(f"top_k = {top_k!r}, expected an integer >= 0 (0 means no top-k filtering)")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise GenerationError(f"top_p = {top_p!r}, expected a number in (0, 1]")


def generate_tokens(model, input_ids, pixel_values=None, attention_mask=None, max_new_tokens=32, temperature=0.0,
                    top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=None, generator=None, cache=None):
    """Yield the next token of every sequence, (B,), step by step (the engine behind generate and stream).

    eos_token_id: an id or a list of ids; None takes the model config's (`</s>` = 2 for Llama).
    Once a row has produced EOS it yields pad_token_id, and iteration stops when every row is done.
    A `cache` may be passed in (chat sessions keep theirs); by default one is allocated for exactly
    prompt + max_new_tokens positions.
    """
    check_settings(max_new_tokens, temperature, top_k, top_p)
    cfg = model.config
    if not torch.is_tensor(input_ids) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        got = f"shape {tuple(input_ids.shape)}" if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise PromptError(f"input_ids must be a non-empty (batch, length) tensor, got {got}")
    B, T = input_ids.shape
    past = cache.length if cache is not None else 0
    limit = cfg.text_config.max_position_embeddings
    if past + T + max_new_tokens > limit:
        raise PromptError(f"prompt of {past + T} tokens + max_new_tokens {max_new_tokens} = {past + T + max_new_tokens} "
                          f"exceeds the context length {limit} (text_config.max_position_embeddings): "
                          + (f"max_new_tokens {limit - past - T} is the most that fits" if past + T < limit else
                             "the prompt alone fills it"))
    eos = cfg.text_config.eos_token_id if eos_token_id is None else eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else eos  # None: no end-of-sequence token
    if not isinstance(eos, (list, tuple)) or not all(isinstance(i, int) for i in eos):
        raise GenerationError(f"eos_token_id = {eos!r}, expected a token id or a list of token ids")
    eos = torch.tensor(eos, dtype=torch.long, device=model.device)
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else
                                                         int(eos[0]) if len(eos) else 0)
    device = model.device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones(B, past + T, dtype=torch.long, device=device)
    if tuple(attention_mask.shape) != (B, past + T):
        raise PromptError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)} "
                          f"(batch, cached + new tokens)")
    attention_mask = attention_mask.to(device)
    if cache is None:
        cache = model.new_cache(B, T + max_new_tokens)  # allocated once for the whole run
    logits = prefill(model, input_ids, pixel_values, attention_mask, cache)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = sample(logits, temperature, top_k, top_p, generator)
        token = torch.where(done, torch.full_like(token, pad), token)
        done = done | torch.isin(token, eos)
        yield token
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
        logits = decode_step(model, token, attention_mask, cache)


def generate(model, input_ids, pixel_values=None, attention_mask=None, max_new_tokens=32, temperature=0.0, top_k=0,
             top_p=1.0, eos_token_id=None, pad_token_id=None, generator=None):
    """The new tokens (B, new) after the prompt; temperature 0 is greedy. See generate_tokens."""
    steps = list(generate_tokens(model, input_ids, pixel_values, attention_mask, max_new_tokens, temperature,
                                 top_k, top_p, eos_token_id, pad_token_id, generator))
    return torch.stack(steps, dim=1)


def stream(model, processor, input_ids, pixel_values=None, attention_mask=None, skip_special_tokens=True, **kwargs):
    """Yield the answer of a single prompt as text pieces, as soon as they are complete characters."""
    if input_ids.shape[0] != 1:
        raise PromptError(f"stream takes one prompt, got a batch of {input_ids.shape[0]}")
    tokens = generate_tokens(model, input_ids, pixel_values, attention_mask, **kwargs)
    yield from decode_pieces(processor, (int(t[0]) for t in tokens), skip_special_tokens)


def decode_pieces(processor, token_ids, skip_special_tokens=True, out=None):
    """Turn a stream of token ids into a stream of text pieces (appending the ids to `out` if given).

    Llama's byte-fallback tokens split an emoji or a CJK character into several byte tokens; a
    piece is only emitted once the decoded text no longer ends in the replacement character.
    """
    ids, shown = ([] if out is None else out), ""
    for token in token_ids:
        ids.append(token)
        text = processor.decode(ids, skip_special_tokens=skip_special_tokens)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text


# ---- a chat session that keeps its KV cache ------------------------------------------------------------


class ChatSession:
    """A conversation with a model that remembers its keys and values between turns.

    Each turn renders the whole conversation with the chat template and tokenizes it, exactly as a
    from-scratch run would, then keeps the longest prefix the cache already holds and runs only the
    rest: a follow-up question costs its own tokens, not the whole history. Images can come with
    any turn.

        session = ChatSession(model, processor)
        print("".join(session.ask("What is this?", images=["photo.jpg"])))
        print("".join(session.ask("And what colour is it?")))
    """

    def __init__(self, model, processor, system=None, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0,
                 generator=None):
        self.model, self.processor, self.system = model, processor, system
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=generator)
        self.reset()

    def reset(self):
        self.messages = [system_message(self.system)] if self.system else []
        self.images = []  # every image of the conversation, in order
        self.cached_ids = []  # the token ids whose keys and values are in self.cache
        self.cache = None
        self.last_tokens = []  # the ids of the last answer, EOS included
        self.reused_tokens = 0  # how many prompt tokens the last turn found in the cache

    def ask(self, text, images=()):
        """Add a user turn and yield the assistant's answer as text pieces."""
        check_settings(**{k: v for k, v in self.settings.items() if k != "generator"})
        new_images = [load_image(x, len(self.images) + i) for i, x in enumerate(images)]
        messages = self.messages + [user_message(text, len(new_images))]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=prompt, images=(self.images + new_images) or None)
        ids = inputs["input_ids"][0].tolist()
        keep = self.reused_tokens = self._reusable_prefix(ids)
        image_id = self.model.config.image_token_index
        images_before = sum(1 for i in range(keep) if ids[i] == image_id and (i == 0 or ids[i - 1] != image_id))
        pixel_values = inputs.get("pixel_values")
        pixel_values = pixel_values[images_before:] if pixel_values is not None and images_before < len(pixel_values) else None
        self._make_room(len(ids) + self.settings["max_new_tokens"])
        self.cache.length = keep  # forget whatever the cache holds beyond the shared prefix
        tokens = generate_tokens(self.model, torch.tensor([ids[keep:]]), pixel_values,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long), cache=self.cache,
                                 **self.settings)
        self.last_tokens = []
        yield from decode_pieces(self.processor, (int(t[0]) for t in tokens), out=self.last_tokens)
        # the cache now holds the prompt and every answer token but the last (which was never fed back)
        self.cached_ids = ids + self.last_tokens[:-1]
        answer = self.processor.decode(self.last_tokens, skip_special_tokens=True)
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.images += new_images

    def _reusable_prefix(self, ids):
        keep = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # at least one token must run to produce the next logits
        image_id = self.model.config.image_token_index
        while 0 < keep < len(ids) and ids[keep] == image_id and ids[keep - 1] == image_id:
            keep -= 1  # never split an image's run of tokens: its features are scattered whole
        return keep

    def _make_room(self, needed):
        limit = self.model.config.text_config.max_position_embeddings
        if needed > limit:
            used = needed - self.settings["max_new_tokens"]
            history = any(m["role"] == "assistant" for m in self.messages)
            fixes = ([f"max_new_tokens {limit - used} is the most that fits"] if used < limit else []) + (
                ["reset() the session"] if history else [])
            raise PromptError(f"the conversation is {used} tokens; with max_new_tokens {self.settings['max_new_tokens']} "
                              f"it exceeds the context length {limit} (text_config.max_position_embeddings): "
                              + (" or ".join(fixes) or "shorten the prompt"))
        if self.cache is None:
            self.cache = self.model.new_cache(1, min(limit, max(needed, 1024)))
        elif self.cache.max_len < needed:  # grow geometrically, so a long chat reallocates rarely
            self.cache = self.cache.resized(min(limit, max(needed, 2 * self.cache.max_len)))
