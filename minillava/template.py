"""A checkpoint's own chat template, rendered as transformers renders it.

A llava-hf folder carries its prompt format as a Jinja template (`chat_template.jinja`,
`chat_template.json` or `tokenizer_config.json`). A fine-tune with another format or a custom system
prompt ships another template, so the template in the folder is the one to render, exactly as
transformers' `ProcessorMixin.apply_chat_template` does (transformers/processing_utils.py and
transformers/utils/chat_template_utils.py, `_cached_compile_jinja_template` and `render_jinja_template`):

- a sandboxed, immutable Jinja environment (templates come from the internet), `trim_blocks` and
  `lstrip_blocks` on, the `loopcontrols` extension ({% break %}, {% continue %});
- the `{% generation %}...{% endgeneration %}` tag, which marks assistant text for training masks and
  renders its body unchanged; `render(..., spans=True)` also returns where each such body lands in the
  prompt, the character spans transformers turns into `assistant_masks` (minillava/training.py);
- the helpers templates call: `raise_exception(message)`, `strftime_now(format)`, and a `tojson` filter
  that keeps non-ASCII characters and does not escape HTML;
- the variables: `messages`, `add_generation_prompt`, `tools` and `documents` (None unless given), and the
  special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`);
- and, beyond transformers, limits (minillava/sandbox.py, limits.py): a template that loops, recurses or grows
  text without end stops soon and small, with a PromptError naming where it came from and why; so does every
  other error a template raises;
- messages copied as plain JSON data (keys whose value is None dropped; anything else, such as a PIL
  image inside a content item, replaced by a placeholder string naming its type), and OpenAI-style
  `{"type": "image_url"}` items turned into `{"type": "image"}`.

`minillava/chat.py` spells the llava-1.5 template out in plain Python, as the readable version; the tests
check that both render the same prompts.
"""
import dataclasses
import json
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache

import jinja2
import numpy as np
from jinja2.exceptions import SecurityError, TemplateError, TemplateRuntimeError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols

from .errors import PromptError
from .limits import LimitError, limited, metered
from .sandbox import Sandbox

# While render(..., spans=True) runs: (the blocks rendered so far, the spans found so far)
_TRACKER = ContextVar("generation_spans", default=None)


class GenerationTag(Extension):
    """{% generation %}body{% endgeneration %} renders `body`. Under render(..., spans=True) it also records
    the character span the body fills in the prompt: transformers' AssistantTracker
    (utils/chat_template_utils.py), whose spans become `assistant_masks`."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        body = caller()
        if (tracker := _TRACKER.get()) is not None:
            blocks, spans = tracker
            start = sum(map(len, blocks))  # everything before this block has been yielded (Template.generate)
            spans.append((start, start + len(body)))
        return body


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache
def compile_template(source):
    """The template text -> a compiled jinja2 Template (cached: a chat renders the same template every turn)."""
    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols],
                  filters={"tojson": _tojson}, globals={"raise_exception": _raise_exception,
                                                        "strftime_now": lambda format: datetime.now().strftime(format)})
    return env.compile_limited(source)


def is_batch(conversation):
    """A list of conversations (each a list of messages), as transformers tells them apart."""
    sequence = (list, tuple)
    return isinstance(conversation, sequence) and len(conversation) > 0 and isinstance(conversation[0], sequence)


def render(template, conversation, add_generation_prompt=False, special_tokens=None, spans=False,
           origin="the chat template", **kwargs):
    """One conversation (a list of {"role", "content"} messages) -> the prompt string `template` renders;
    spans=True: (prompt, [(start, end) of each {% generation %} block's text in the prompt]).
    origin: where the template came from, for error messages (the processor names its folder)."""
    if not isinstance(conversation, (list, tuple)) or not all(isinstance(m, dict) for m in conversation):
        raise PromptError(f"a conversation must be a list of message dicts, got {conversation!r:.80}")
    messages = [_plain({k: v for k, v in m.items() if v is not None}) for m in conversation]
    for m in messages:
        if isinstance(m.get("content"), list):
            m["content"] = [{"type": "image", "url": c["image_url"].get("url", "") if isinstance(c["image_url"], dict)
                             else c["image_url"]} if isinstance(c, dict) and c.get("type") == "image_url" and
                            "image_url" in c else c for c in m["content"]]
    variables = {"tools": None, "documents": None, **{k: v for k, v in (special_tokens or {}).items() if v is not None},
                 **_plain(kwargs)}
    blocks, found = [], []
    token = _TRACKER.set((blocks, found) if spans else None)
    try:  # block by block, each counted and appended as it comes: the generation tag reads how much precedes it
        compiled = compile_template(template)
        with limited(messages, variables):
            for block in metered(compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                   **variables)):
                blocks.append(block)
        prompt = "".join(blocks)
    except Exception as e:  # a template is code from the internet: whatever it raises, say where and why
        raise PromptError(f"{origin} {_reason(e)}") from None
    finally:
        _TRACKER.reset(token)
    for i, m in enumerate(messages):  # a template that reads content as a list drops a plain string silently
        content = m.get("content")
        if isinstance(content, str) and content.strip() and content.strip() not in prompt:
            raise PromptError(f"message {i}: its text {content.strip()!r:.60} is not in the prompt the chat template "
                              f"rendered; this template reads content as a list: write it as "
                              f"[{{'type': 'text', 'text': ...}}]")
    return (prompt, found) if spans else prompt


def _reason(error):
    """Why a template failed, in words."""
    if isinstance(error, TemplateSyntaxError):
        return f"does not parse (line {error.lineno}: {error.message})"
    if isinstance(error, LimitError):
        return f"was stopped: {error}"
    if isinstance(error, SecurityError):
        return f"tried what the sandbox forbids: {error}"
    if isinstance(error, TemplateRuntimeError):  # an undefined name, a set on a non-namespace...
        return f"failed: {error}"
    if isinstance(error, TemplateError):  # raise_exception(): the template refuses this conversation
        return f"refused the conversation: {error}"
    if isinstance(error, RecursionError):
        return "was stopped: it went too deep (RecursionError: a macro that calls itself, or data nested too deeply)"
    return f"failed: {type(error).__name__}: {error}"


def _plain(value):
    """Plain JSON data for the sandbox (transformers' _plain_template_data): other objects become '<TypeName>'."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (enums, numpy scalars) carry methods the sandbox does not know
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"
