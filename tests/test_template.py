"""minillava.template renders a folder's chat template as transformers' AutoProcessor.apply_chat_template does, and
the plain-Python llava-1.5 format (minillava.chat) agrees with its Jinja template on many conversations."""
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoProcessor

import minillava
from minillava import Processor, PromptError
from minillava.chat import LLAVA_CHAT_TEMPLATE, format_conversation
from minillava.template import render
from tests.test_chat import CONVERSATIONS

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
    openai = [{"role": "user", "name": None, "content": [{"type": "image_url", "image_url": {"url": "x.png"}}, text("Hi")]}]
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
    assert format_conversation(conversation, True) == theirs.apply_chat_template(conversation, add_generation_prompt=True)
