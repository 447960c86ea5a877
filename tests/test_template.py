"""minillava.template renders a folder's chat template as transformers' AutoProcessor.apply_chat_template does; a
hostile template ends in a PromptError, soon and small; the plain-Python llava-1.5 format (minillava.chat) agrees with
its Jinja template on many conversations."""
import gc
import json
import re
import shutil
import sys
import time
import tracemalloc
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoProcessor

import minillava
from minillava import Processor, PromptError, limits
from minillava.chat import LLAVA_CHAT_TEMPLATE, format_conversation
from minillava.template import compile_template, render
from tests.test_chat import CONVERSATIONS, IMAGE

# A template unlike llava's, using what transformers' environment provides: special-token variables,
# raise_exception, the {% generation %} tag, loop controls, the tojson filter, and trim_blocks/lstrip_blocks
# (the block tags below sit on their own indented lines: with those flags they leave no whitespace behind).
CUSTOM = """{{ bos_token }}[SYSTEM] You answer in one word.
{% for message in messages %}
    {% if message['role'] == 'tool' %}{{ raise_exception('no tools here: ' + message['role']) }}{% endif %}
    {% if loop.index > 6 %}{% break %}{% endif %}
    <{{ message['role'] }}>
    {% for item in message['content'] %}
        {% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}
    {% endfor %}
    {% if message['role'] == 'assistant' %}{% generation %}{{ eos_token }}{% endgeneration %}{% endif %}

{% endfor %}
{% if add_generation_prompt %}<assistant>{% endif %}
{% if meta is defined %}{{ meta | tojson }}{% endif %}"""


def text(t):
    return {"type": "text", "text": t}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The demo folder with its own template, and a copy whose chat_template.jinja holds CUSTOM."""
    custom = tmp_path_factory.mktemp("custom") / "demo"
    shutil.copytree(minillava.DEMO, custom)
    (custom / "chat_template.json").unlink()
    (custom / "chat_template.jinja").write_text(CUSTOM, encoding="utf-8")
    return {"demo": minillava.DEMO, "custom": custom}


@pytest.fixture(scope="module")
def pair(folders):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Processor.from_pretrained(folders[name]), AutoProcessor.from_pretrained(folders[name])
        return cache[name]
    return get


@pytest.mark.parametrize("folder", ["demo", "custom"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_folder_template_as_transformers_renders_it(pair, folder, add_generation_prompt):
    ours, theirs = pair(folder)
    for conversation in CONVERSATIONS:
        want = theirs.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == want
    if folder == "custom":  # the folder's template, not llava-1.5's
        assert ours.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True) == (
            "<s>[SYSTEM] You answer in one word.\n    <user>\n<image>What is shown in this image?\n<assistant>")


def test_a_batch_gives_a_list_of_prompts(pair):
    ours, theirs = pair("custom")
    batch = CONVERSATIONS[:4]
    prompts = ours.apply_chat_template(batch, add_generation_prompt=True)
    assert prompts == theirs.apply_chat_template(batch, add_generation_prompt=True)
    assert isinstance(prompts, list) and len(prompts) == 4


def test_template_variables_and_overrides(pair):
    ours, theirs = pair("custom")
    conversation = CONVERSATIONS[1]
    # extra keyword arguments reach the template, as in transformers
    assert (ours.apply_chat_template(conversation, meta={"k": "ü"}) ==
            theirs.apply_chat_template(conversation, meta={"k": "ü"}))
    assert '{"k": "ü"}' in ours.apply_chat_template(conversation, meta={"k": "ü"})
    # a template passed in replaces the folder's
    assert (ours.apply_chat_template(conversation, chat_template=LLAVA_CHAT_TEMPLATE) ==
            theirs.apply_chat_template(conversation, chat_template=LLAVA_CHAT_TEMPLATE))
    # OpenAI-style image items and None-valued keys are normalised first
    openai = [{"role": "user", "name": None,
               "content": [{"type": "image_url", "image_url": {"url": "x.png"}}, text("Hi")]}]
    assert ours.apply_chat_template(openai) == theirs.apply_chat_template(openai)


def test_template_errors_are_prompt_errors(pair, folders):
    ours, theirs = pair("custom")
    tool = [{"role": "tool", "content": [text("x")]}]
    with pytest.raises(Exception, match="no tools here: tool"):
        theirs.apply_chat_template(tool)
    with pytest.raises(PromptError, match="no tools here: tool"):
        ours.apply_chat_template(tool)
    with pytest.raises(PromptError, match="does not parse"):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template="{% for m in messages %}")
    with pytest.raises(PromptError, match="list of message dicts"):
        ours.apply_chat_template(["USER: hi"])
    # the sandbox: a template cannot reach Python internals
    with pytest.raises(PromptError):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template="{{ messages.__class__.__mro__ }}")


def test_plain_string_content_is_refused_not_dropped(pair):
    # llava-hf's template iterates content as a list; transformers renders a string's text as nothing
    ours, theirs = pair("demo")
    conversation = [{"role": "user", "content": "What color is the circle?"}]
    assert theirs.apply_chat_template(conversation, add_generation_prompt=True) == "USER: ASSISTANT:"
    with pytest.raises(PromptError, match="message 0.*What color is the circle"):
        ours.apply_chat_template(conversation, add_generation_prompt=True)
    # a template that reads strings renders them, as in transformers
    string_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert (ours.apply_chat_template(conversation, chat_template=string_template) ==
            theirs.apply_chat_template(conversation, chat_template=string_template))


def test_no_template_in_the_folder(folders, tmp_path):
    folder = shutil.copytree(folders["demo"], tmp_path / "demo")
    (folder / "chat_template.json").unlink()
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(PromptError, match="no chat template"):
        Processor.from_pretrained(folder).apply_chat_template(CONVERSATIONS[0])


# What real templates use, beyond llava's: namespace, macros and caller(), `~`, slices, loop variables, `%` and
# str.format, string methods, set and filter blocks, and the filters (tojson of tools among them)
KITCHEN_SINK = """{%- set ns = namespace(system='', turns=0) -%}
{%- macro item(c) -%}
    {%- if c['type'] == 'image' -%}<image>{%- else -%}{{ c['text'] | trim }}{%- endif -%}
{%- endmacro -%}
{%- macro box(title) -%}[{{ title }}|{{ caller() }}]{%- endmacro -%}
{%- if messages[0]['role'] == 'system' -%}
    {%- set ns.system = messages[0]['content'][0]['text'] ~ '\n' -%}{%- set loop_messages = messages[1:] -%}
{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}
{{ bos_token }}{{ ns.system }}
{%- if tools -%}
    [TOOLS]{{ tools | tojson(indent=2) }}{{ tools | map(attribute='name') | join(', ') | center(30) }}[/TOOLS]
{%- endif -%}
{%- for m in loop_messages -%}
    {%- set ns.turns = ns.turns + 1 -%}
    [{{ m['role'][:1] | upper }}{{ loop.index }}/{{ loop.length }}{{ loop.cycle('a', 'b') }}]
    {%- for c in m['content'] %}{{ item(c) }}{% endfor %}
    {%- if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}
    {%- if loop.last -%}
        ({{ '%d turns, %s' % (ns.turns, m['role']) }}; {{ '{}-{:>3}'.format(loop.first, messages|length) }})
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}{{ 'assistant'.title() ~ ':' }}{% endif %}
{% set summary -%}
    {{ messages|selectattr('role', 'equalto', 'user')|list|length }} user,
    {{- (messages|map(attribute='role')|unique|sort|list) }}
{%- endset -%}
{% filter upper %}{{ summary }}{% endfilter %}
|{% call box('x' * 3) %}{{ messages[::-1][0]['role'] ~ 1 ~ 2.5 }}{% endcall %}
{{ (messages|map(attribute='role')|join(','))|replace('user', 'U', 1)|truncate(12) }}|{{ '%5.2f'|format(1.5) }}
{{- [3, 1, 2]|sort|reverse|join }}{{ [1, 2, 3, 4, 5]|batch(2)|list }}{{ [[1], [2]]|sum(start=[]) }}
{{- {'b': 1, 'a': 2}|dictsort }}{{ ('a b c ' * 4)|wordwrap(7) }}{{ 'x\ny'|indent(2, true) }}{{ '<&>'|e }}
{{- 'abc'.replace('b', 'B').center(7, '*').split('*')|length }}{{ 2 ** 10 }}{{ [1, 2] + [3] }}{{ 'ab' * 3 }}
{{- (7 // 2, 7 % 3, -7, 1.5 * 2) }}
"""
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "parameters": {"city": {"type": "string", "enum": ["Paris", "Zürich"]}}},
         {"name": "count", "description": "Count things", "parameters": {}}]


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_what_real_templates_use_renders_as_in_transformers(pair, tools):
    ours, theirs = pair("demo")
    for conversation in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            want = theirs.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                              chat_template=KITCHEN_SINK, tools=tools)
            assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                            chat_template=KITCHEN_SINK, tools=tools) == want


# ---- hostile templates: each ends in a PromptError, in bounded time and memory -----------------------------------

# name -> (template, what the error says). Escapes, loops, recursion, products, widths, outputs, and plain failures.
HOSTILE = {
    "reaches for __mro__": ("{{ messages.__class__.__mro__[1].__subclasses__() }}", "sandbox forbids"),
    "reaches for __globals__": ("{{ raise_exception.__globals__['os'] }}", "sandbox forbids"),
    "attr() trick": ("{{ (messages|attr('__class__')).__mro__ }}", "sandbox forbids"),
    "format-string attribute": ("{{ '{0.__class__.__mro__}'.format(messages) }}", "sandbox forbids"),
    "changes its input": ("{{ messages.append(1) }}", "sandbox forbids"),
    "range(10**12)": ("{% for i in range(10**12) %}x{% endfor %}", "OverflowError: Range too big"),
    "nested loops printing nothing": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "MAX_SECONDS|MAX_STEPS"),
    "nested loops in a macro": ("{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}"
                                "{{ 'y' * 1000 }}{% endfor %}{% endfor %}{% endmacro %}{{ m() }}", "MAX_TEXT"),
    "a macro that calls itself": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    "a macro that calls itself twice": (
        "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
        "MAX_SECONDS|MAX_STEPS"),
    "a loop that calls itself": ("{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}", "RecursionError"),
    "string product": ("{{ 'x' * 10**10 }}", "'\\*' would make 10,000,000,000 characters"),
    "list product": ("{{ ([1] * 10**9)|length }}", "MAX_TEXT"),
    "a huge power": ("{{ 2 ** (10 ** 10) }}", "MAX_BITS"),
    "squaring in a loop": ("{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
                           "{% endfor %}{{ ns.x > 0 }}", "MAX_BITS"),
    "doubling with ~": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", "MAX_TEXT"),
    "doubling with a macro": ("{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='x') %}"
                              "{% for i in range(64) %}{% set ns.s = d(ns.s) %}{% endfor %}", "MAX_TEXT"),
    "doubling with replace": ("{% set ns = namespace(s='xx') %}{% for i in range(64) %}"
                              "{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}", "MAX_TEXT"),
    "slices kept": ("{% set ns = namespace(l=[], s='x' * 5000000) %}{% for i in range(100000) %}"
                    "{% set ns.l = ns.l + [ns.s[i:]] %}{% endfor %}", "a slice would make"),
    "join of a huge range": ("{{ range(100000)|join('x' * 100000) }}", "join filter would make"),
    "str.join of a generator": ("{{ ''.join((['x' * 100000] * 1000)|map('string')) }}", "MAX_TEXT"),
    "printing a huge list": ("{{ ['x' * 100000] * 100 }}", "printing a value would make"),
    "a huge output": ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "MAX_TEXT"),
    "center": ("{{ 'x'|center(10000000000) }}", "center filter would make"),
    "indent": ("{{ ('x\n' * 100000)|indent(width=100000) }}", "indent filter would make"),
    "wordwrap": ("{{ ('x ' * 100000)|wordwrap(1, wrapstring='y' * 100000) }}", "wordwrap filter would make"),
    "str.ljust": ("{{ 'x'.ljust(10**10) }}", "ljust\\(\\) would make"),
    "Markup.center": ("{{ ('x'|safe).center(10**10) }}", "center\\(\\) would make"),
    "str.format width": ("{{ '{:>10000000000}'.format('x') }}", "str.format would make"),
    "printf width from an argument": ("{{ '%*s' % (10**10, 'x') }}", "would make"),
    "format filter precision": ("{{ '%.10000000000f'|format(1.5) }}", "format filter would make"),
    "replace of the empty string": ("{{ ('x' * 100000).replace('', 'y' * 100000) }}", "replace\\(\\) would make"),
    "int.to_bytes": ("{{ (1).to_bytes(10**10, 'big') }}", "to_bytes\\(\\) would make"),
    "batch filler": ("{{ [1]|batch(10**10, 'x')|list|length }}", "batch filter would make"),
    "tojson indent": ("{{ [[[[[1]]]]]|tojson(indent=10**10) }}", "tojson filter would make"),
    "tojson of deep nesting": ("{% set ns = namespace(x=1) %}{% for i in range(3000) %}{% set ns.x = [ns.x] %}"
                               "{% endfor %}{{ ns.x|tojson }}", "tojson filter would make"),
    "lipsum": ("{{ lipsum(10**6) }}", "'lipsum' is undefined"),
    "TypeError": ("{{ 1 + 'x' }}", "TypeError"),
    "ZeroDivisionError": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "KeyError": ("{{ '{x}'.format() }}", "KeyError"),
    "UndefinedError": ("{{ foo.bar }}", "'foo' is undefined"),
    "syntax": ("{% for %}", "does not parse"),
    "a long source": ("x" * 200_000, "MAX_SOURCE"),
}


@contextmanager
def address_space_limit(extra):
    """At most `extra` bytes more address space than the process has now: a template that escaped the limits fails
    here with a MemoryError instead of taking the machine's memory."""
    import resource  # Unix only
    vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def no_collections():
    """The CPU limit is the template's own: a garbage collection that falls due in the rendering thread walks every
    object the test run holds (on a runner with slow memory, seconds), which the template did not spend."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and sets RLIMIT_AS")
def test_hostile_templates_end_in_a_prompt_error_soon_and_small(tmp_path):
    folder = shutil.copytree(minillava.DEMO, tmp_path / "hostile", ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": HOSTILE["string product"][0]}))
    processor = Processor.from_pretrained(folder)
    conversation = [{"role": "user", "content": [IMAGE, text("What is this?")]}]
    for name, (template, reason) in HOSTILE.items():
        processor.chat_template = template  # as if the folder held it
        with address_space_limit(2**30), no_collections():
            start = time.thread_time()
            with pytest.raises(PromptError) as error:
                processor.apply_chat_template(conversation, add_generation_prompt=True)
            seconds = time.thread_time() - start
            # the memory in a second render: tracemalloc slows every allocation (a recursion about 10x, and far
            # more on a runner with slow memory), which the first render's CPU limit would pay for
            tracemalloc.start()
            with pytest.raises(PromptError):
                processor.apply_chat_template(conversation, add_generation_prompt=True)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert str(error.value).startswith(f"the chat template of {folder} "), name
        assert re.search(reason, str(error.value)), (name, str(error.value))
        # MAX_SECONDS is 1 s of CPU and the others end at once (measured: the two loops that print nothing take
        # 1.01 s, all others under 0.12 s; the largest peak is 10 MB)
        assert seconds < 2 * limits.MAX_SECONDS, (name, seconds)
        assert peak < 64 * 2**20, (name, peak)


def test_a_template_passed_as_text_is_named_so(pair):
    ours, _ = pair("demo")
    with pytest.raises(PromptError, match="the chat template passed as chat_template= was stopped: '\\*' would make"):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template="{{ 'x' * 10**10 }}")


def test_the_limits_leave_room_for_long_conversations(pair):
    """400 messages, 450,000 characters (about 110,000 tokens, more than any LLaVA model's context), with an image
    every 20 messages: llava-1.5's template and KITCHEN_SINK with 50 tools render them as transformers does, using a
    small part of each limit."""
    words = "the red circle is left of a blue square and two green triangles sit below it;".split()
    conversation = [{"role": ("user", "assistant")[i % 2], "content": [IMAGE] * (i % 20 == 0) + [
        text(" ".join(words[(i + k) % len(words)] for k in range(230)))]} for i in range(400)]
    tools = [{"name": f"tool_{i}", "description": "d" * 200,
              "parameters": {f"p{j}": {"type": "string", "description": "x" * 50} for j in range(10)}}
             for i in range(50)]
    ours, theirs = pair("demo")
    for template in (LLAVA_CHAT_TEMPLATE, KITCHEN_SINK):
        want = theirs.apply_chat_template(conversation, add_generation_prompt=True, chat_template=template, tools=tools)
        assert ours.apply_chat_template(conversation, add_generation_prompt=True, chat_template=template,
                                        tools=tools) == want
        compiled = compile_template(template)
        with limits.limited(conversation, tools) as left, no_collections():
            start = time.thread_time()
            prompt = "".join(limits.metered(compiled.generate(messages=conversation, tools=tools, bos_token="<s>",
                                                               add_generation_prompt=True)))
            seconds = time.thread_time() - start
        assert len(prompt) > 450_000
        # measured: made 1.4 M (llava) and 2.0 M characters, 2,220 and 2,479 steps, 0.009 and 0.019 s CPU
        assert limits.MAX_TEXT - left.chars < limits.MAX_TEXT / 4
        assert limits.MAX_STEPS - left.steps < limits.MAX_STEPS / 100
        assert seconds < limits.MAX_SECONDS / 10



# ---- the plain-Python llava-1.5 format is the Jinja template, written out --------------------------------------

ITEMS = st.one_of(st.just({"type": "image"}), st.builds(text, st.text(max_size=12)))
MESSAGES = st.builds(lambda role, content: {"role": role, "content": content},
                     st.sampled_from(["system", "user", "assistant"]), st.lists(ITEMS, max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation=st.lists(MESSAGES, max_size=6), add_generation_prompt=st.booleans())
def test_python_format_equals_the_jinja_template(conversation, add_generation_prompt):
    assert (format_conversation(conversation, add_generation_prompt) ==
            render(LLAVA_CHAT_TEMPLATE, conversation, add_generation_prompt))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation=st.lists(MESSAGES, min_size=1, max_size=5))
def test_python_format_equals_transformers(pair, conversation):
    _, theirs = pair("demo")
    want = theirs.apply_chat_template(conversation, add_generation_prompt=True)
    assert format_conversation(conversation, True) == want
