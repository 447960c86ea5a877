"""What one render of a chat template may do, and what an operation would cost before it runs.

A render gets a `Limits` (`with limited(conversation, variables):`); minillava/sandbox.py checks each operation of the
template against it: `check(n)` before an operation that would make n characters, `spend(n)` for what it made,
`step()` for each loop step and call. The limits:

- one render may make MAX_TEXT characters in all (a list or dict item counts ITEM = 8, its pointer); for a long
  conversation, as much again as the conversation and variables hold (as repr() prints them; MAX_TEXT more at most);
- MAX_STEPS loop iterations and calls, and MAX_SECONDS of CPU time;
- integers up to MAX_BITS bits; a template's text up to MAX_SOURCE characters (jinja compiles about 100,000 a
  second); `range()` up to jinja's own MAX_RANGE (100,000) items; Python's recursion limit for macros.

Real templates stay far below: tests/test_template.py renders a 450,000-character, 400-message conversation (more
than any LLaVA model's context) with llava-1.5's template and with a tool-style one and 50 tools, and checks that
each uses under a quarter of MAX_TEXT, a hundredth of MAX_STEPS and a tenth of MAX_SECONDS (measured: 1.4 M and
2.0 M characters, 2,220 and 2,479 steps, 0.009 and 0.019 s).

The `*_size` functions bound what an operation would make from its arguments: each reads as the worst case of one
Python or jinja operation.
"""
import re
import time
from collections.abc import ItemsView, KeysView, ValuesView
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import chain

from jinja2.utils import Namespace
from markupsafe import Markup

MAX_SOURCE = 100_000  # real templates: a few thousand characters, tool-calling ones up to about 20,000
MAX_TEXT = 10_000_000  # 20x the 450,000-character prompt of the test; 40 MB at 4 bytes a character
MAX_STEPS = 1_000_000
MAX_SECONDS = 1.0  # CPU time of the rendering thread: other work on the machine does not shorten it
MAX_BITS = 65_536  # Python itself prints integers of at most 4,300 digits (14,000 bits)
ITEM = 8  # a list or dict item costs what 8 characters do (the pointer to it)


class LimitError(Exception):
    """A template went past one of the limits."""


class Limits:
    """What is left to one render; `active()` is the one running in this thread."""

    def __init__(self, inputs):
        self.chars, self.inputs = MAX_TEXT, inputs
        self.steps = MAX_STEPS
        self.stop = time.thread_time() + MAX_SECONDS

    def check(self, n, what):
        if n > self.chars and self.inputs is not None:  # a long conversation may make more: measure it only now
            self.chars += min(text_size(self.inputs, MAX_TEXT), MAX_TEXT)
            self.inputs = None
        if n > self.chars:
            raise LimitError(f"{what} would make {n:,} characters (a list item counts {ITEM}), more than the "
                             f"{self.chars:,} this render may still make (MAX_TEXT = {MAX_TEXT:,}, more for a "
                             f"long input)")

    def most(self):
        """The most this render could still make: where a walk over a value may stop counting."""
        return self.chars + (MAX_TEXT if self.inputs is not None else 0)

    def spend(self, n, what):
        self.check(n, what)
        self.chars -= n

    def step(self):
        self.steps -= 1
        if self.steps < 0:
            raise LimitError(f"it ran {MAX_STEPS:,} loop steps and calls (MAX_STEPS): a loop or recursion that "
                             f"does not end?")
        if time.thread_time() > self.stop:
            raise LimitError(f"it ran {MAX_SECONDS} s of CPU time (MAX_SECONDS): a loop or recursion that does "
                             f"not end?")


_ACTIVE = ContextVar("template_limits", default=None)


@contextmanager
def limited(*inputs):
    """Run one render under fresh limits; `inputs` (the conversation, the variables) widen the text budget."""
    token = _ACTIVE.set(Limits(inputs))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def active():
    found = _ACTIVE.get()
    if found is None:  # jinja folds constant expressions while compiling: leave them to the render, which is limited
        raise LimitError("no render is running")
    return found


def metered(pieces, what="the prompt"):
    """The pieces a template prints, each counted before it is kept."""
    found = active()
    for piece in pieces:
        found.spend(len(piece), what)
        yield piece


# ---- sizes ---------------------------------------------------------------------------------------------------


def text_size(value, limit):
    """An upper bound on the length of str(), repr() or JSON (indent 1) of `value`; stops counting past `limit`."""
    total, stack = 0, [iter((value,))]
    while stack and total <= limit:
        x = next(stack[-1], stack)  # the stack itself marks an iterator's end
        depth = len(stack) - 1
        if x is stack:
            stack.pop()
        elif isinstance(x, str):  # inside a container, repr and JSON escapes make up to 10 characters of one
            total += len(x) if depth == 0 else 10 * len(x) + depth + 2
        elif isinstance(x, bytes):
            total += 4 * len(x) + depth + 3
        elif isinstance(x, int):
            total += x.bit_length() // 3 + depth + 2
        elif isinstance(x, (dict, Namespace, list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)):
            if isinstance(x, (dict, Namespace)):
                x = x if isinstance(x, dict) else x._Namespace__attrs
                x, n = chain.from_iterable(x.items()), 2 * len(x)
            else:
                n = len(x)
            total += depth + 2 + n * (depth + 3)  # each item takes at least its indent and separator
            stack.append(iter(x))
        elif x is None or isinstance(x, float):
            total += 25 + depth
        else:  # macros, generators, undefined: a short repr
            total += 100 + depth
    return total


def _text(value):
    return text_size(value, active().most())


def size(value):
    """A size parameter (a width, a count): ints count as themselves, strings and lists as their length."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    return length(value)


def length(result):
    """What a result costs: its characters, ITEM per item, or the bytes of a number."""
    if isinstance(result, int):
        return result.bit_length() // 8 + 1
    if isinstance(result, (str, bytes)):
        return len(result)
    return ITEM * len(result) if isinstance(result, (list, tuple, dict, set, frozenset)) else 1


def formatted_size(fmt, args):
    """Bound of `fmt % args` or fmt.format(*args): each field the longest argument, each number in `fmt` a width; with
    `*` or a nested field, integer arguments are widths too."""
    if not isinstance(fmt, (str, bytes)):  # the format filter prints its value first
        active().check(_text(fmt), "printing a value")
        fmt = str(fmt)
    pattern = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    widths = sum(int(n) if len(n) < 10 else 10 ** len(n) for n in re.findall(r"\d+", pattern))
    if "*" in pattern or re.search(r"\{[^{}]*\{", pattern):
        widths += sum(size(a) for a in args if isinstance(a, int))
    longest = max((_text(a) for a in args), default=0)
    return (6 if isinstance(fmt, Markup) else 1) * (len(fmt) * (longest + 1) + widths)  # Markup escapes arguments


def values(args):
    return list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, (tuple, list)) else [args]


def replaced_size(s, old, new, count=None):
    """Bound of s.replace(old, new, count), or of the replace filter on any value."""
    hits = s.count(old) if isinstance(s, (str, bytes)) and isinstance(old, type(s)) and old else _text(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return _text(s) + hits * _text(new)


def joined_size(sep, items):
    total, limit = len(items) * size(sep), active().most()
    for item in items:
        if total > limit:
            break
        total += text_size(item, limit)
    return total


def method_size(method, args, kwargs):
    """Bound of what a method of a str, bytes or int makes, before it runs."""
    s, name = method.__self__, method.__name__
    if isinstance(s, int):
        return size(kwargs.get("length", args[0] if args else 1)) if name == "to_bytes" else 1
    if name in ("center", "ljust", "rjust", "zfill"):
        bound = max(len(s), size(args[0]) if args else 0)
    elif name == "expandtabs":
        tabsize = size(kwargs.get("tabsize", args[0] if args else 8))
        bound = len(s) + s.count("\t" if isinstance(s, str) else b"\t") * tabsize
    elif name == "replace" and len(args) >= 2:
        bound = replaced_size(s, *args[:2], args[2] if len(args) > 2 else kwargs.get("count"))
    elif name == "join" and args:
        bound = joined_size(s, args[0])
    elif name == "translate" and args and isinstance(args[0], dict):
        bound = len(s) * max([1, *(size(v) for v in args[0].values())])
    else:  # the others make at most 10 of one: upper() of 'ß' is 'SS', encode('unicode_escape') of '😀' 10 bytes
        bound = 10 * len(s)
    return 6 * bound if isinstance(s, Markup) else bound


def _text_filter(growth):
    return lambda v, *args, **kwargs: growth * _text(v)


# filter -> a bound on what it makes, called with the filter's own arguments (jinja2/filters.py); the others only
# pick, count, sort or regroup the items of their value
FILTER_SIZES = {
    "center": lambda v, width=80: max(_text(v), size(width)),
    "indent": lambda v, width=4, first=False, blank=False: (_text(v) + 1) * (1 + size(width)),
    "wordwrap": lambda v, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True:
        (_text(v) + 1) * (1 + size(wrapstring or "\n")),
    "replace": replaced_size,
    "truncate": lambda v, length=255, killwords=False, end="...", leeway=None: _text(v) + size(end),
    "format": lambda v, *args, **kwargs: formatted_size(v, values(kwargs or args)),
    "join": lambda v, d="", attribute=None: joined_size(d, v),
    "sum": lambda v, attribute=None, start=0: length(start) + sum(length(x) for x in v),
    "batch": lambda v, linecount, fill_with=None: ITEM * (size(v) + size(linecount)),
    "slice": lambda v, slices, fill_with=None: ITEM * (size(v) + size(slices)),
    "tojson": lambda v, ensure_ascii=False, indent=None, separators=None, sort_keys=False:  # [v]: strings escaped
        _text([v]) * (1 + size(indent) + (_text(separators) if separators else 0)),
    "urlize": lambda v, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None:
        _text(v) * (12 + size(target) + size(rel)),
    "xmlattr": lambda d, autospace=True: 6 * _text(d),
    **{name: _text_filter(1) for name in ("string", "safe", "trim", "striptags", "pprint")},
    **{name: _text_filter(3) for name in ("capitalize", "title", "upper", "lower")},
    **{name: _text_filter(6) for name in ("e", "escape", "forceescape")},
    "urlencode": _text_filter(12),
}
