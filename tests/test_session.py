"""Chat sessions (minillava/session.py), and the command line against them, on a tiny checkpoint with real tokenizer
files: every turn gives the tokens a from-scratch run gives, while running only its own."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import minillava
from minillava import ChatSession, ImageError, PromptError
from minillava.chat import system_message, user_message
from minillava.generation import generate
from tests.helpers import HANG_S
from tests.helpers import checkpoints as C


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return C.build(tmp_path_factory.mktemp("chat") / "ckpt", "gqa", seed=12)


@pytest.fixture(scope="module")
def loaded(folder):
    return minillava.load(folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(80, 60), (50, 90)]):
        arr = (np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.3, 1, (1, 1, 3)) + rng.normal(0, 20, (h, w, 3)))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / f"photo{i}.png")
        paths.append(str(root / f"photo{i}.png"))
    return paths


def test_multi_turn_session_equals_rerunning_from_scratch(loaded, photos):
    model, processor = loaded
    session = ChatSession(model, processor, system="Be brief.", max_new_tokens=10)
    turns = [("What is this?", [photos[0]]), ("And the colour?", []), ("Compare with this one.", [photos[1]])]
    previous_prompt = None
    for i, (question, images) in enumerate(turns):
        answer = "".join(session.ask(question, images=images))
        # the same conversation rendered and run from scratch, with no cache reuse
        conv = session.messages[:-1]
        prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
        inputs = processor(text=prompt, images=[photos[0]] + ([photos[1]] if i == 2 else []))
        fresh = generate(model, inputs["input_ids"], inputs.get("pixel_values"), max_new_tokens=10)
        assert session.last_tokens == fresh[0, :len(session.last_tokens)].tolist()
        assert answer == processor.decode(session.last_tokens, skip_special_tokens=True)
        if i:  # a follow-up runs only its new tokens: the whole previous prompt came from the cache
            assert session.reused_tokens >= previous_prompt
        previous_prompt = inputs["input_ids"].shape[1]
    session.reset()
    assert session.messages == [system_message("Be brief.")] and session.cache is None


def from_scratch(model, processor, session, images):
    """The last answer's tokens as a fresh run over the whole conversation gives them."""
    prompt = processor.apply_chat_template(session.messages[:-1], add_generation_prompt=True)
    inputs = processor(text=prompt, images=images or None)
    return generate(model, inputs["input_ids"], inputs.get("pixel_values"), max_new_tokens=10)[0].tolist()


def test_each_image_is_preprocessed_once(loaded, photos, monkeypatch):
    model, processor = loaded
    seen = []
    preprocess = processor.preprocess
    monkeypatch.setattr(processor, "preprocess", lambda images, **kw: seen.append(images) or preprocess(images, **kw))
    session = ChatSession(model, processor, max_new_tokens=10)
    for question, images in [("What is this?", [photos[0]]), ("And now?", []), ("And this one?", [photos[1]]),
                             ("Which is larger?", [])]:
        "".join(session.ask(question, images=images))
    assert seen == [[photos[0]], [photos[1]]]
    assert session.last_tokens == from_scratch(model, processor, session, photos)[:len(session.last_tokens)]


def test_a_turn_fails_before_its_first_piece_and_leaves_the_session_as_it_was(loaded, photos):
    model, processor = loaded
    session = ChatSession(model, processor, max_new_tokens=10)
    "".join(session.ask("What is this?", images=[photos[0]]))
    state = (list(session.messages), list(session.cached_ids), session.pixel_values)
    with pytest.raises(ImageError, match="nothing.png"):
        session.ask("And this?", images=["nothing.png"])  # raised by the call itself, no piece read
    with pytest.raises(PromptError, match="context length"):
        session.ask("x " * 5000)
    assert (session.messages, session.cached_ids) == state[:2] and session.pixel_values is state[2]
    "".join(session.ask("And the colour?"))
    assert session.last_tokens == from_scratch(model, processor, session, [photos[0]])[:len(session.last_tokens)]


def test_an_answer_left_unread_is_not_part_of_the_conversation(loaded, photos):
    model, processor = loaded
    session = ChatSession(model, processor, max_new_tokens=10)
    "".join(session.ask("What is this?", images=[photos[0]]))
    unread = session.ask("Tell me more.")
    next(unread)  # one piece read, then the user moves on: the cache holds a turn the conversation does not
    "".join(session.ask("And the colour?"))
    assert [m["content"][-1]["text"] for m in session.messages if m["role"] == "user"] == [
        "What is this?", "And the colour?"]
    assert session.last_tokens == from_scratch(model, processor, session, [photos[0]])[:len(session.last_tokens)]


def test_settings_are_checked_when_the_session_is_made(loaded):
    model, processor = loaded
    with pytest.raises(minillava.GenerationError, match="top_p = 2"):
        ChatSession(model, processor, top_p=2)
    with pytest.raises(minillava.GenerationError, match="compile = 'no', expected True or False"):
        ChatSession(model, processor, compile="no")


def run_cli(*args, stdin=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "minillava", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=HANG_S)


def test_cli_ask_streams_the_same_answer_as_the_api(folder, loaded, photos):
    model, processor = loaded
    out = run_cli("ask", "--model", str(folder), "--image", photos[0], "--max-new-tokens", "8", "What is this?")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no progress bar: stderr is not a terminal (tests/test_cli.py checks one that is)
    prompt = processor.apply_chat_template([user_message("What is this?", 1)], add_generation_prompt=True)
    inputs = processor(text=prompt, images=photos[0])
    want = processor.decode(generate(model, inputs["input_ids"], inputs["pixel_values"], max_new_tokens=8)[0],
                            skip_special_tokens=True)
    assert out.stdout == want + "\n"


def test_cli_chat_through_stdin(folder, photos):
    script = f"/image {photos[0]}\nWhat is this?\n/image /no/such/file.png\nMore?\n/reset\nHi\n/quit\n"
    out = run_cli("chat", "--model", str(folder), "--max-new-tokens", "4", stdin=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ASSISTANT: ") == 3
    assert "/no/such/file.png" in out.stdout and "(conversation cleared)" in out.stdout


def test_cli_logits_writes_every_stage(folder, loaded, photos, tmp_path):
    model, processor = loaded
    path = tmp_path / "stages.safetensors"
    out = run_cli("logits", "--model", str(folder), "--image", photos[1], "Describe it.", "--out", str(path))
    assert out.returncode == 0, out.stderr
    stages = load_file(path)
    assert set(stages) == {"input_ids", "attention_mask", "pixel_values", "vision_hidden_states.2", "vision_features",
                           "image_features", "inputs_embeds", "logits"}
    with torch.no_grad():
        assert torch.equal(stages["logits"], model(stages["input_ids"], stages["pixel_values"]))
        assert torch.equal(stages["image_features"], model.image_features(stages["pixel_values"]))
        assert torch.equal(stages["inputs_embeds"], model.embed(stages["input_ids"], stages["pixel_values"]))
    # and the same stages from transformers on the same folder
    ref = C.reference(folder)
    with torch.no_grad():
        want = ref(input_ids=stages["input_ids"], pixel_values=stages["pixel_values"], output_hidden_states=True)
    assert (want.logits - stages["logits"]).abs().max() <= 1e-5


def test_cli_errors_are_one_line(folder, photos):
    out = run_cli("ask", "--model", str(folder / "missing"), "Hi")
    assert out.returncode == 2 and "no such checkpoint folder" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("ask", "--model", str(folder), "--temperature", "-1", "Hi")
    assert out.returncode == 2 and "argument --temperature: -1 is not" in out.stderr
    out = run_cli("ask", "--model", str(folder), "--device", "cuda", "Hi")
    if not torch.cuda.is_available():
        assert out.returncode == 2 and "CUDA is not available" in out.stderr
