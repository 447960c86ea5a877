"""minillava.chat against the llava-1.5 chat template as transformers 5.23 renders it, and the vicuna_v1 format."""
import pytest
from transformers import AutoProcessor

from minillava.chat import VICUNA_V1_SYSTEM, format_conversation
from minillava.errors import PromptError
from minillava.processor import Processor
from tests.helpers.tokenizer_files import write_processor_files


def text(t):
    return {"type": "text", "text": t}


IMAGE = {"type": "image"}
CONVERSATIONS = [
    [{"role": "user", "content": [IMAGE, text("What is shown in this image?")]}],
    [{"role": "user", "content": [IMAGE, text("What’s shown in this image?")]},
     {"role": "assistant", "content": [text("This image shows a red stop sign.")]},
     {"role": "user", "content": [text("Describe the image in more details.")]}],
    [{"role": "system", "content": [text("You are helpful.")]}, {"role": "user", "content": [text("Hi")]}],
    [{"role": "user", "content": [text("A"), IMAGE, text("B"), IMAGE]}],  # images are moved before the texts
    [{"role": "user", "content": [text("")]}],  # empty user text
    [{"role": "user", "content": []}],
    [{"role": "user", "content": [{"type": "image", "url": "https://example.com/cat.png"}, text("  spaces  ")]}],
    [{"role": "user", "content": [text("line 1\nline 2\n")]}, {"role": "assistant", "content": [text("ok\n")]}],
    [{"role": "user", "content": [IMAGE, text("Qu'est-ce que c'est ? 🦙 日本語")]},
     {"role": "assistant", "content": [text("Un lama.</s>")]}],
    [{"role": "system", "content": [IMAGE, text("sys")]}, {"role": "user", "content": [text("u")]},
     {"role": "assistant", "content": [text("a1"), text("a2")]}, {"role": "user", "content": [IMAGE]}],
    [{"role": "assistant", "content": [text("I start.")]}],
    [{"role": "user", "content": [IMAGE, IMAGE, IMAGE, text("three images")]},
     {"role": "assistant", "content": [text("yes")]}, {"role": "user", "content": [IMAGE, text("and one more")]},
     {"role": "assistant", "content": [text("sure")]}],
]


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    folder = write_processor_files(tmp_path_factory.mktemp("chat"), config=True)
    return AutoProcessor.from_pretrained(folder, backend="pil"), Processor.from_pretrained(folder)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_llava_style_equals_transformers_template(processors, i, add_generation_prompt):
    hf, ours = processors
    conversation = CONVERSATIONS[i]
    expected = hf.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == expected
    assert format_conversation(conversation, add_generation_prompt, style="llava") == expected


def test_documented_renderings():  # what transformers renders with llava-hf's chat_template.json
    assert format_conversation(CONVERSATIONS[0]) == "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    assert format_conversation(CONVERSATIONS[0], False) == "USER: <image>\nWhat is shown in this image? "
    assert format_conversation(CONVERSATIONS[2]) == "You are helpful. USER: Hi ASSISTANT:"
    assert format_conversation(CONVERSATIONS[3]) == "USER: <image>\n<image>\nA B ASSISTANT:"


def test_string_content_is_text(processors):
    # transformers' template iterates a string's characters and silently renders nothing ("USER: ASSISTANT:");
    # minillava treats a string as one text item.
    hf, _ = processors
    assert hf.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True) == "USER: ASSISTANT:"
    assert format_conversation([{"role": "user", "content": "Hi"}]) == "USER: Hi ASSISTANT:"


def test_vicuna_v1():
    conversation = [{"role": "user", "content": [text("What is this?"), IMAGE]},
                    {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Its colour?"}]
    assert format_conversation(conversation, style="vicuna_v1") == (
        VICUNA_V1_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Its colour? ASSISTANT:")
    assert format_conversation(conversation[:2], add_generation_prompt=False, style="vicuna_v1") == (
        VICUNA_V1_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>")
    custom = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [IMAGE, text("  Hi ")]}]
    assert format_conversation(custom, style="vicuna_v1") == "Be brief. USER: <image>\nHi ASSISTANT:"


@pytest.mark.parametrize("conversation, style, culprit", [
    ([{"role": "tool", "content": "x"}], "llava", "'tool'"),
    ([{"role": "user", "content": [{"type": "video"}]}], "llava", "'video'"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}], "llava", "None"),
    ([{"role": "user", "content": 42}], "llava", "int"),
    ([{"content": "no role"}], "llava", "'role'"),
    ("USER: hi", "llava", "str"),
    ([{"role": "user", "content": "hi"}], "chatml", "'chatml'"),
    ([{"role": "assistant", "content": "hi"}], "vicuna_v1", "'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "vicuna_v1", "turn 1"),
])
def test_errors_name_the_culprit(conversation, style, culprit):
    with pytest.raises(PromptError) as e:
        format_conversation(conversation, style=style)
    assert culprit in str(e.value)
