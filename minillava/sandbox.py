"""A Jinja sandbox for a chat template that came from the internet: it ends, soon and small, whatever it does.

jinja2's ImmutableSandboxedEnvironment, where transformers renders chat templates, keeps a template away from
Python internals and from changing its inputs, but not from exhausting the machine: `range(10**5)` in a loop of
`range(10**5)` runs 10**10 steps, `'x' * 10**10` asks for 10 GB, `'x'|center(10**10)` too, a macro that calls
itself twice per call never ends. `Sandbox` is that environment with every way a template has to make text or
lists larger than what it was given checked against minillava/limits.py *before* it runs (the operators `*` `+`
`%` `**`, `~`, slices, the filters, the methods of strings and numbers, printing), and every loop step and call
counted. Going past a limit raises LimitError, which template.render turns into a PromptError naming the
template's origin. `lipsum` (random placeholder text, of no use in a prompt) is left out.
"""
import functools

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_eval_context

from .limits import (
    FILTER_SIZES,
    MAX_BITS,
    MAX_SOURCE,
    LimitError,
    active,
    formatted_size,
    length,
    metered,
    method_size,
    text_size,
    values,
)


def limited_filter(name, f):
    """`f` with its result bounded before it runs and counted after; join and sum get their iterable as a list."""
    bound, skip = FILTER_SIZES.get(name), 1 if hasattr(f, "jinja_pass_arg") else 0  # skip the context jinja passes

    @functools.wraps(f)
    def counted(*args, **kwargs):
        found = active()
        found.step()
        if name in ("join", "sum") and len(args) > skip:  # they consume it whole anyway
            args = (*args[:skip], list(args[skip]), *args[skip + 1:])
        if bound is not None:
            found.check(bound(*args[skip:], **kwargs), f"the {name} filter")
        result = f(*args, **kwargs)
        found.spend(length(result), f"the {name} filter")
        return result
    return counted


class Steps:
    """A loop's iterable: each step counted (len() kept, for loop.length)."""

    def __init__(self, iterable):
        self.iterable = iterable

    def __len__(self):
        return len(self.iterable)

    def __iter__(self):
        found = active()
        for item in self.iterable:
            found.step()
            yield item


def _limit(node):
    """Rewrite a parsed template, children first, where jinja would compile to plain Python that nothing counts:
    a loop's iterable -> `iterable|loop_steps`, `a ~ b` -> `[a, b]|join`, `x[a:b:c]` -> `x|sliced(a, b, c)`."""
    for field, value in node.iter_fields():
        if isinstance(value, list):
            value[:] = [_limit(v) if isinstance(v, nodes.Node) else v for v in value]
        elif isinstance(value, nodes.Node):
            setattr(node, field, _limit(value))
    if isinstance(node, nodes.For):
        node.iter = nodes.Filter(node.iter, "loop_steps", [], [], None, None, lineno=node.lineno)
    elif isinstance(node, nodes.Concat):
        return nodes.Filter(nodes.List(node.nodes), "join", [], [], None, None, lineno=node.lineno)
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        parts = [part or nodes.Const(None) for part in (node.arg.start, node.arg.stop, node.arg.step)]
        return nodes.Filter(node.node, "sliced", parts, [], None, None, lineno=node.lineno)
    return node


def _sliced(value, start, stop, step):  # x[start:stop:step], a copy
    result = value[start:stop:step]
    active().spend(length(result), "a slice")
    return result


@pass_eval_context
def _finalize(eval_ctx, value):  # every {{ value }} passes here before it is turned into text
    if not isinstance(value, str) or eval_ctx.autoescape:
        found = active()
        found.check((6 if eval_ctx.autoescape else 1) * text_size(value, found.most()), "printing a value")
    return value


class Sandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with limits. Compile with `compile_limited()`, render inside `limits.limited()`."""
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, filters=(), globals=(), **options):
        super().__init__(finalize=_finalize, **options)
        del self.globals["lipsum"]
        self.globals.update(globals)
        self.filters.update(filters)
        self.filters = {name: limited_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(loop_steps=Steps, sliced=_sliced)

    def compile_limited(self, source):
        """Template text -> a Template whose loops count their steps, whose `~` is a counted join and whose slices are
        counted copies (see `_limit`)."""
        if len(source) > MAX_SOURCE:
            raise LimitError(f"it is {len(source):,} characters long, more than the {MAX_SOURCE:,} a template may have "
                             f"(MAX_SOURCE)")
        tree = _limit(self.parse(source))
        tree.set_environment(self)
        return self.from_string(tree)

    def call_binop(self, context, operator, left, right):
        found = active()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if right * max(left.bit_length() - 1, 0) > MAX_BITS:  # at least that many: the exact check follows
                raise LimitError(f"{left!r:.20} ** {right} has more than {MAX_BITS:,} bits (MAX_BITS)")
        elif operator == "*" and isinstance(right, int) and isinstance(left, (str, bytes, list, tuple)):
            found.check(length(left) * right, "'*'")
        elif operator == "*" and isinstance(left, int) and isinstance(right, (str, bytes, list, tuple)):
            found.check(left * length(right), "'*'")
        elif operator == "+" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, type(left)):
            found.check(length(left) + length(right), "'+'")
        elif operator == "%" and isinstance(left, (str, bytes)):
            found.check(formatted_size(left, values(right)), "'%'")
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, int) and result.bit_length() > MAX_BITS:
            raise LimitError(f"'{operator}' made a number of {result.bit_length():,} bits, more than "
                             f"{MAX_BITS:,} (MAX_BITS)")
        found.spend(length(result), f"'{operator}'")
        return result

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None

        def checked(*args, **kwargs):
            active().check(formatted_size(value.__self__, [*args, *kwargs.values()]), f"str.{value.__name__}")
            return wrapper(*args, **kwargs)
        return checked

    def call(__self, __context, __obj, *args, **kwargs):  # jinja's odd names leave every keyword to the template
        found = active()
        found.step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes, int)):  # a method of a string or a number: what can it make?
            if __obj.__name__ == "join" and args:  # str.join reads its iterable whole anyway
                args = (list(args[0]), *args[1:])
            found.check(method_size(__obj, args, kwargs), f"{type(owner).__name__}.{__obj.__name__}()")
        result = super().call(__context, __obj, *args, **kwargs)
        found.spend(length(result), "a call")
        return result

    def concat(self, pieces):  # what a macro, a {% set %} block or a {% filter %} block printed
        return "".join(metered(pieces, "a macro's or block's text"))
