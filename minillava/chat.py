"""Conversations -> prompt strings.

A conversation is a list of messages, {"role": "system" | "user" | "assistant", "content": ...}, where
content is a string or a list of items {"type": "text", "text": "..."} / {"type": "image", ...} (the image
itself is passed to the processor separately; here an image item only places an `<image>` marker).

Two formats:
- style="llava": what llava-hf's chat_template.json renders, which is what `processor.apply_chat_template`
  gives (in transformers and in minillava, which renders the folder's template: minillava/template.py).
  Written out in Python, as the version to read:
  each message is "ROLE: " (no prefix for system), then "<image>\\n" for each of its images, then each of
  its texts followed by a space; "ASSISTANT:" at the end when add_generation_prompt. There is no default
  system prompt and no "</s>" after assistant turns.
- style="vicuna_v1": the original LLaVA repository's `conv_vicuna_v1` (llava/conversation.py, used by its
  eval scripts): a system prompt, "USER: ..." and "ASSISTANT: ..." separated by " ",
  "</s>" after each assistant turn, and the image markers moved to the start of the first user message.
"""
from .errors import PromptError

VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# llava-hf's chat_template.json (llava-hf/llava-1.5-7b-hf on the hub): what format_conversation(style="llava")
# renders, in Jinja, for checkpoint folders that minillava writes (so transformers' apply_chat_template works on
# them too)
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


def system_message(text):
    """A system turn, its content as a list: llava-hf's template reads content as a list and drops a bare string."""
    return {"role": "system", "content": [{"type": "text", "text": text}]}


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
