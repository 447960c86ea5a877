"""Conversations -> prompt strings.

A conversation is a list of messages, {"role": "system" | "user" | "assistant", "content": ...}, where
content is a string or a list of items {"type": "text", "text": "..."} / {"type": "image", ...} (the image
itself is passed to the processor separately; here an image item only places an `<image>` marker).

Two formats:
- style="llava": what llava-hf's chat_template.json renders (REFERENCE.md 5.2), which is what
  `processor.apply_chat_template` gives in transformers 5.23. Written out in Python:
  each message is "ROLE: " (no prefix for system), then "<image>\\n" for each of its images, then each of
  its texts followed by a space; "ASSISTANT:" at the end when add_generation_prompt. There is no default
  system prompt and no "</s>" after assistant turns.
- style="vicuna_v1": the original LLaVA repository's `conv_vicuna_v1` (llava/conversation.py, used by its
  eval scripts; REFERENCE.md 3.4): a system prompt, "USER: ..." and "ASSISTANT: ..." separated by " ",
  "</s>" after each assistant turn, and the image markers moved to the start of the first user message.
"""
import torch

from .errors import PromptError

VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# llava-hf's chat_template.json (REFERENCE.md 5.2): what format_conversation(style="llava") renders, in Jinja,
# for checkpoint folders that minillava writes (so transformers' apply_chat_template works on them too)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
ROLES = ("system", "user", "assistant")
STYLES = ("llava", "vicuna_v1")


def user_message(text, n_images=0):
    """One user turn: its images first, then the text (the order the llava template renders anyway)."""
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def format_conversation(conversation, add_generation_prompt=True, style="llava"):
    """Render `conversation` as one prompt string; `<image>` marks where each image goes."""
    if style not in STYLES:
        raise PromptError(f"style {style!r}, expected one of {STYLES}")
    messages = [_split_message(m, i) for i, m in enumerate(_check_list(conversation))]
    if style == "llava":
        return _format_llava(messages, add_generation_prompt)
    return _format_vicuna_v1(messages, add_generation_prompt)


def _format_llava(messages, add_generation_prompt):
    """llava-hf's chat_template.json, line by line."""
    prompt = ""
    for role, n_images, texts in messages:
        if role != "system":
            prompt += role.upper() + ": "
        prompt += "<image>\n" * n_images  # all images of a message first...
        prompt += "".join(text + " " for text in texts)  # ...then all its texts, each followed by a space
    if add_generation_prompt:
        prompt += "ASSISTANT:"
    return prompt


def _format_vicuna_v1(messages, add_generation_prompt):
    """Original LLaVA conv_vicuna_v1 (SeparatorStyle.TWO): sep " " after user turns, "</s>" after assistant turns."""
    system = VICUNA_V1_SYSTEM
    if messages and messages[0][0] == "system":
        system = " ".join(messages[0][2])
        if messages[0][1]:
            raise PromptError("message 0: vicuna_v1 has no place for an image in the system prompt")
        messages = messages[1:]
    n_images = sum(n for _, n, _ in messages)
    turns = []
    for i, (role, _, texts) in enumerate(messages):
        expected = ("user", "assistant")[i % 2]
        if role != expected:
            raise PromptError(f"vicuna_v1 expects user and assistant turns to alternate, starting with user: "
                              f"turn {i} is {role!r}, expected {expected!r}")
        turns.append((role, " ".join(texts)))
    if n_images:  # Conversation.get_prompt: "<image>\n" + the first user message, stripped
        if not turns:
            raise PromptError("vicuna_v1: images but no user message to put them in")
        turns[0] = ("user", "<image>\n" * n_images + turns[0][1].strip())
    prompt = system + " "
    for role, text in turns:
        # an empty message renders as "ROLE:" with no separator, as in the original
        prompt += (f"{role.upper()}: {text}" + (" " if role == "user" else "</s>")) if text else f"{role.upper()}:"
    if add_generation_prompt:
        prompt += "ASSISTANT:"
    return prompt


def _check_list(conversation):
    if isinstance(conversation, dict):
        conversation = [conversation]
    if not isinstance(conversation, (list, tuple)):
        raise PromptError(f"conversation must be a list of messages, got {type(conversation).__name__}")
    return conversation


def _split_message(message, i):
    """{"role", "content"} -> (role, number of images, [texts]), checking every field."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise PromptError(f"message {i}: expected a dict with 'role' and 'content', got {message!r}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise PromptError(f"message {i}: role {role!r}, expected one of {ROLES}")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, (list, tuple)):
        raise PromptError(f"message {i}: content must be a string or a list of items, got {type(content).__name__}")
    n_images, texts = 0, []
    for j, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "image":
            n_images += 1
        elif kind == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif kind == "text":
            raise PromptError(f"message {i}, item {j}: a text item needs a string 'text', got {item.get('text')!r}")
        else:
            raise PromptError(f"message {i}, item {j}: type {kind!r}, expected 'text' or 'image' (item {item!r})")
    return role, n_images, texts


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
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.images = []  # every image of the conversation, in order
        self.cached_ids = []  # the token ids whose keys and values are in self.cache
        self.cache = None
        self.last_tokens = []  # the ids of the last answer, EOS included
        self.reused_tokens = 0  # how many prompt tokens the last turn found in the cache

    def ask(self, text, images=()):
        """Add a user turn and yield the assistant's answer as text pieces."""
        from .generate import check_settings, decode_pieces, generate_tokens
        from .images import load_image
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
            raise PromptError(f"the conversation is {needed - self.settings['max_new_tokens']} tokens; with "
                              f"max_new_tokens {self.settings['max_new_tokens']} it exceeds the context length {limit} "
                              f"(text_config.max_position_embeddings): reset() the session")
        if self.cache is None:
            self.cache = self.model.new_cache(1, min(limit, max(needed, 1024)))
        elif self.cache.max_len < needed:  # grow geometrically, so a long chat reallocates rarely
            self.cache = self.cache.resized(min(limit, max(needed, 2 * self.cache.max_len)))
