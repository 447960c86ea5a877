"""Text out of generation: `stream` yields one prompt's answer as it is decoded, and `ChatSession` holds a
conversation (its messages, its images, the KV cache of what was said) so that each turn runs only its own
tokens. Token-level generation, which sees ids only, is minillava/generation.py.
"""
import torch

from . import compiled
from .chat import system_message, user_message
from .errors import ImageError, PromptError
from .generation import check_settings, decode_step, generate_tokens
from .loading import KV_POSITIONS


def stream(model, processor, input_ids, pixel_values=None, attention_mask=None, skip_special_tokens=True,
           **settings):
    """The answer to a single prompt as text pieces, each yielded as soon as its characters are complete.

    settings: those of generation.generate_tokens. The checks and the prompt run in this call.
    """
    if torch.is_tensor(input_ids) and input_ids.ndim == 2 and input_ids.shape[0] != 1:
        raise PromptError(f"stream takes one prompt, got a batch of {input_ids.shape[0]}")
    tokens = generate_tokens(model, input_ids, pixel_values, attention_mask, **settings)
    return decode_pieces(processor, (int(t[0]) for t in tokens), skip_special_tokens)


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


class ChatSession:
    """A conversation with a model that remembers its keys and values between turns.

    Each turn renders the whole conversation with the chat template and tokenizes it, exactly as a
    from-scratch run would, then keeps the longest prefix the cache already holds and runs only the
    rest: a follow-up question costs its own tokens, not the whole history. Images can come with
    any turn; each is preprocessed once, when it arrives.

        session = ChatSession(model, processor)
        print("".join(session.ask("What is this?", images=["photo.jpg"])))
        print("".join(session.ask("And what colour is it?")))

    compile=True runs each turn's one-token steps compiled (minillava/compiled.py): the first turn compiles,
    the later ones reuse it, their cache keeping its length until the conversation outgrows it.
    """

    def __init__(self, model, processor, system=None, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0,
                 generator=None, compile=False):
        check_settings(max_new_tokens, temperature, top_k, top_p, compile)  # a bad setting fails here, not at a turn
        if compile:
            compiled.decoder(model, decode_step)  # whether it can be compiled, checked now (compiled at a turn)
        self.model, self.processor, self.system = model, processor, system
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=generator, compile=compile)
        self.reset()

    def reset(self):
        """Start a new conversation."""
        self.messages = [system_message(self.system)] if self.system else []
        self.pixel_values = None  # (n_images, 3, H, W): every image of the conversation, in order
        self.cached_ids = []  # the token ids whose keys and values are in self.cache, from position 0
        self.cache = None
        self.last_tokens = []  # the ids of the last answer, EOS included
        self.reused_tokens = 0  # how many prompt tokens the last turn found in the cache

    def ask(self, text, images=()):
        """Add a user turn; return the assistant's answer as an iterator of text pieces.

        Whatever can fail (an image, the template, the context length) fails in this call, before the
        first piece. The turn joins the conversation once its answer has been read to the end.
        """
        new = self.processor.preprocess(images) if images else None  # (n_new, 3, H, W)
        pixel_values = self._with_images(new)
        messages = self.messages + [user_message(text, 0 if new is None else len(new))]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        size = None if pixel_values is None else pixel_values.shape[-2:]
        ids = self.processor.tokenize([prompt], size)["input_ids"][0].tolist()
        keep = self._reusable_prefix(ids)
        self._make_room(len(ids), keep)
        image_id = self.model.config.image_token_index
        images_before = sum(1 for i in range(keep) if ids[i] == image_id and (i == 0 or ids[i - 1] != image_id))
        n_images = 0 if pixel_values is None else len(pixel_values)
        rest = pixel_values[images_before:] if images_before < n_images else None  # the images still to run
        self.cached_ids = ids[:keep]  # until the prompt has run, the cache holds only what is reused
        tokens = generate_tokens(self.model, torch.tensor([ids[keep:]]), rest,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long), cache=self.cache,
                                 start_pos=keep, **self.settings)
        self.cached_ids, self.reused_tokens = ids, keep
        return self._answer(tokens, messages, pixel_values)

    def _answer(self, tokens, messages, pixel_values):
        self.last_tokens = []
        yield from decode_pieces(self.processor, (int(t[0]) for t in tokens), out=self.last_tokens)
        # the cache holds the prompt and every answer token but the last (which was never fed back)
        self.cached_ids = self.cached_ids + self.last_tokens[:-1]
        answer = self.processor.decode(self.last_tokens, skip_special_tokens=True)
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.pixel_values = pixel_values

    def _with_images(self, new):
        """The conversation's pixel values with this turn's appended."""
        if new is None or self.pixel_values is None:
            return self.pixel_values if new is None else new
        if new.shape[1:] != self.pixel_values.shape[1:]:
            raise ImageError(f"the new image(s) come out as {tuple(new.shape[1:])} pixel values, the conversation's "
                             f"earlier ones as {tuple(self.pixel_values.shape[1:])}: one model takes one size")
        return torch.cat([self.pixel_values, new])

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

    def _make_room(self, prompt_length, keep):
        """A cache with room for the prompt and the longest answer, holding the `keep` positions reused."""
        needed = prompt_length + self.settings["max_new_tokens"]
        limit = self.model.config.text_config.max_position_embeddings
        if needed > limit:
            fixes = [f"max_new_tokens {limit - prompt_length} is the most that fits"] if prompt_length < limit else []
            if any(m["role"] == "assistant" for m in self.messages):
                fixes.append("reset the session to start a new conversation")
            raise PromptError(f"the conversation is {prompt_length} tokens; with max_new_tokens "
                              f"{self.settings['max_new_tokens']} it exceeds the context length {limit} "
                              f"(text_config.max_position_embeddings): " + (" or ".join(fixes) or "shorten the prompt"))
        if self.cache is None:
            self.cache = self.model.new_cache(1, min(limit, max(needed, KV_POSITIONS)), static=self.settings["compile"])
        elif self.cache.max_len < needed:  # grow geometrically, so a long chat reallocates rarely
            self.cache = self.cache.resized(min(limit, max(needed, 2 * self.cache.max_len)), keep)
