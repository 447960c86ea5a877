"""minillava.training's ids and labels: the original LLaVA-1.5 recipe's (restated in tests/helpers/llava_recipe.py)
wherever the original reports no mismatch, right where the original goes wrong, transformers' assistant_masks for
the template format, bad records refused by name, and the demo's training batches unchanged."""
import copy
import random

import pytest
import torch
from transformers import AutoProcessor, LlamaTokenizer

import minillava
from minillava import Processor, PromptError, TrainingError, testing, training
from minillava.demo import conversations
from tests.helpers.llava_recipe import original
from tests.helpers.tokenizer_files import write_processor_files

WORDS = ["the", "cat", "What", "is", "in", "this", "image", "?", "Describe", "2", "3.5", "dog's", "café", "日本", "🙂",
         "red", "\n", "a", "photo", "of", "USER", "yes", "No", ",", ".", "(x)", "-", ":", "  ", "circle"]


def words(rng, n):
    s = "".join(rng.choice(WORDS) + rng.choice([" ", "", " "]) for _ in range(rng.randint(1, n))).strip()
    return s or "ok"


def record(rng, i):
    """A generated LLaVA record: 1-4 turns, an image (before, after or glued to the first question) or none."""
    conv = []
    for _ in range(rng.randint(1, 4)):
        conv += [{"from": "human", "value": words(rng, 8)}, {"from": "gpt", "value": words(rng, 10)}]
    r = {"id": f"r{i}", "conversations": conv}
    if rng.random() < 0.6:
        r["image"] = rng.choice(["wide.png", "tall.png"])
        q = conv[0]["value"]
        conv[0]["value"] = rng.choice([f"<image>\n{q}", f"{q}\n<image>", f"<image>{q}", f"{q} <image> "])
    return r


def caption(rng, i):
    return {"id": f"c{i}", "image": "wide.png", "conversations": [
        {"from": "human", "value": rng.choice(["<image>\nDescribe the image.", "Caption this.\n<image>"])},
        {"from": "gpt", "value": words(rng, 12)}]}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A llava-hf processor folder with the real Llama-2 tokenizer, small images (16 image tokens)."""
    return write_processor_files(tmp_path_factory.mktemp("llava") / "llava", config=True, image_size=56)


def setting(name, llama_folder):
    """(processor, encode, legacy) for the original: its tokenizer, and a minillava processor that uses the same."""
    if name == "demo":
        demo = Processor.from_pretrained(minillava.DEMO)  # its tokenizer_config.json: legacy true
        return demo, lambda t: demo.tokenizer.encode(t).ids, True
    legacy = name == "llama2-legacy"
    tok = LlamaTokenizer.from_pretrained(llama_folder, legacy=legacy)  # as the original loads it (no config.json)
    processor = copy.copy(Processor.from_pretrained(llama_folder))
    processor.tokenizer = tok.backend_tokenizer
    return processor, lambda t: tok(t).input_ids, legacy


def rows(out):
    """The batch's rows without their right padding: [(ids, labels)]."""
    return [(ids[:n].tolist(), labels[:n].tolist()) for ids, labels, n in
            zip(out["input_ids"], out["labels"], out["attention_mask"].sum(1))]


@pytest.mark.parametrize("name", ["llama2-legacy", "llama2-nonlegacy", "demo"])
def test_plain_and_vicuna_v1_equal_the_original_recipe(name, llama_folder, record_images):
    processor, encode, legacy = setting(name, llama_folder)
    rng = random.Random(0)
    for format, records in [("vicuna_v1", [record(rng, i) for i in range(96)]),
                            ("plain", [caption(rng, i) for i in range(32)])]:
        for start in range(0, len(records), 8):
            chunk = records[start:start + 8]
            out = training.batch(processor, chunk, image_folder=record_images, format=format)
            n = processor.num_image_tokens(*out["pixel_values"].shape[-2:])
            for r, (ids, labels) in zip(chunk, rows(out)):
                want_ids, want_labels, mismatch = original(r, format, encode, processor.bos_token_id, legacy, n,
                                                           processor.image_token_id)
                assert not mismatch, r  # generated records the original handles: every one
                assert ids == want_ids, r
                assert labels == want_labels, r
                assert any(x != -100 for x in labels)


def H(value):
    return {"from": "human", "value": value}


def G(value):
    return {"from": "gpt", "value": value}


# Where the original's counting goes wrong: (tokenizer, conversation, the original's correction for non-legacy
# tokenizers on or off, what the original gives). "mismatch": it masks the whole sample and prints the warning.
WRONG = {
    "</s> in an answer": ("llama2-legacy", [H("Hi"), G("Yes</s>No")], True, "mismatch"),
    "</s> in a question": ("llama2-legacy", [H("What is </s>?"), G("A token.")], True, "mismatch"),
    "' ASSISTANT: ' in a question": ("llama2-legacy", [H("Say ASSISTANT: hello"), G("hello")], True, "mismatch"),
    "' ASSISTANT: ' in an answer": ("llama2-legacy", [H("Who?"), G("The ASSISTANT: me")], True, "mismatch"),
    "a question that ends with 'ASSISTANT:'": ("llama2-legacy", [H("Say ASSISTANT:"), G("ok")], True,
                                               "labels 'ASSISTANT:' as the answer"),
    "llava-hf's tokenizer.json with its legacy: false, two turns": (
        "llava-hf", [H("Hi"), G("Hello"), H("Again"), G("Yes")], True, "mismatch"),
    "a non-legacy tokenizer, two turns, without the correction": (
        "llama2-nonlegacy", [H("Hi"), G("Hello"), H("Again"), G("Yes")], False, "mismatch"),
}


@pytest.mark.parametrize("kind", list(WRONG))
def test_where_the_original_goes_wrong(kind, llama_folder):
    name, conv, correction, what = WRONG[kind]
    if name == "llava-hf":  # the folder's tokenizer.json, its tokenizer_config saying legacy: false
        processor = Processor.from_pretrained(llama_folder)
        processor, encode, legacy = processor, lambda t: processor.tokenizer.encode(t).ids, False
    else:
        processor, encode, legacy = setting(name, llama_folder)
    r = {"id": kind, "conversations": conv}
    (ids, labels), = rows(training.batch(processor, [r]))
    want_ids, want_labels, mismatch = original(r, "vicuna_v1", encode, processor.bos_token_id, legacy, 0,
                                               processor.image_token_id, correction)
    assert ids == want_ids  # the same tokens; only the labels differ
    if what == "mismatch":
        assert mismatch and set(want_labels) == {-100}
    else:
        assert not mismatch and "ASSISTANT:" in processor.decode([t for t in want_labels if t != -100])
    # minillava: each answer and its </s>, nothing else (compared without spaces: decode puts them its own way)
    runs, run = [], []
    for t in labels + [-100]:
        if t != -100:
            run.append(t)
        elif run:
            runs.append("".join(processor.decode(run).split()))
            run = []
    assert runs == ["".join((turn["value"] + "</s>").split()) for turn in conv[1::2]]


def chat(rng, with_images=True):
    """A generated chat-format conversation: system messages, several images, unicode and role-like words."""
    pick = ["the", "cat", "What", "is", "?", "2", "café", "日本", "🙂", "\n", "USER:", "ASSISTANT:", "</s>", "  ",
            "green"]
    say = lambda n: "".join(rng.choice(pick) + rng.choice([" ", ""]) for _ in range(rng.randint(1, n))).strip() or "ok"
    conv = [{"role": "system", "content": [{"type": "text", "text": say(6)}]}] if rng.random() < 0.3 else []
    n_images = 0
    for turn in range(rng.randint(1, 4)):
        content = [{"type": "text", "text": say(8)}]
        for _ in range(rng.choice([0, 0, 1, 1, 2]) if with_images and n_images < 3 else 0):
            image = testing.image(seed=rng.randrange(50), size=(rng.randint(30, 90), rng.randint(30, 90)))
            content.insert(rng.randint(0, len(content)), {"type": "image", "image": image})
            n_images += 1
        conv.append({"role": "user", "content": content})
        if turn or rng.random() < 0.9:
            conv.append({"role": "assistant", "content": [{"type": "text", "text": say(8)}]})
    return conv


@pytest.mark.parametrize("folder", ["llama2", "demo"])
def test_apply_chat_template_with_assistant_masks_equals_transformers(folder, llama_folder, record_images):
    folder = llama_folder if folder == "llama2" else minillava.DEMO
    ours, theirs = Processor.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    rng = random.Random(1)
    convs = [chat(rng, with_images=i % 3 != 0) for i in range(120)]
    first_question = next(m for m in convs[0] if m["role"] == "user")
    first_question["content"] += [{"type": "image", "path": str(record_images / "tall.png")},  # images given as files
                                  {"type": "image_url", "image_url": {"url": str(record_images / "wide.png")}}]
    kwargs = dict(tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    seen = []
    for c in convs + [convs[:5]]:  # one by one, then a batch (padded as the folder pads)
        want = theirs.apply_chat_template(c, return_tensors="pt", processor_kwargs={"padding": True}, **kwargs)
        got = ours.apply_chat_template(c, **kwargs)
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
        seen.append(len(got.get("pixel_values", [])))
    assert seen.count(0) >= 30 and max(seen) >= 3 and sum(seen) >= 80  # text only, and up to 3 images
    want = theirs.apply_chat_template(convs[1], tokenize=True, return_tensors="pt")
    assert torch.equal(ours.apply_chat_template(convs[1], tokenize=True), want)


def test_template_format_labels_are_transformers_assistant_masks(llama_folder, record_images):
    """batch(format="template") on records: labels = ids where transformers' assistant_masks are 1."""
    processor, reference = Processor.from_pretrained(llama_folder), AutoProcessor.from_pretrained(llama_folder)
    rng = random.Random(2)
    records = [record(rng, i) for i in range(40)]
    out = training.batch(processor, records, image_folder=record_images, format="template")
    for r, (ids, labels) in zip(records, rows(out)):
        messages = []
        for turn in r["conversations"]:
            value = turn["value"]
            content = [{"type": "text", "text": value.replace("<image>", "").strip() if "<image>" in value else value}]
            if "<image>" in value:
                content.insert(0, {"type": "image", "path": str(record_images / r["image"])})
            messages.append({"role": training.ROLES[turn["from"]], "content": content})
        want = reference.apply_chat_template(messages, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True, return_tensors="pt")
        assert ids == want["input_ids"][0].tolist()
        assert labels == torch.where(want["assistant_masks"][0].bool(), want["input_ids"][0], -100).tolist()


def test_transformers_masks_the_next_user_and_never_an_eos():
    """The quirk the docs show, measured on the demo folder: llava-hf's template puts "answer " in the generation
    block, so its mask covers the answer, then the next "▁USER:" (which holds that space) or a lone "▁"."""
    processor = Processor.from_pretrained(minillava.DEMO)
    r = {"id": "q", "conversations": [H("What color is the circle?"), G("green"),
                                      H("How many shapes are there?"), G("two")]}
    labelled = {}
    for format in ("template", "vicuna_v1"):
        (ids, labels), = rows(training.batch(processor, [r], format=format))
        labelled[format] = [processor.tokenizer.id_to_token(t) for t in labels if t != -100]
    assert labelled["template"] == ["▁green", "▁USER:", "▁two", "▁"]
    assert labelled["vicuna_v1"] == ["▁green", "</s>", "▁two", "</s>"]


def test_images_are_padded_to_a_square_as_llava_trained(llama_folder, record_images):
    processor = Processor.from_pretrained(llama_folder)
    r = {"id": "w", "image": "wide.png", "conversations": [H("<image>\nWhat is this?"), G("A test picture.")]}
    got = training.batch(processor, [r], image_folder=record_images)["pixel_values"]
    assert torch.equal(got, processor.preprocess(record_images / "wide.png", pad_to_square=True))
    own = training.batch(processor, [r], image_folder=record_images, pad_images=False)["pixel_values"]
    assert torch.equal(own, processor.preprocess(record_images / "wide.png"))  # the folder's: resize and center crop
    assert not torch.equal(got, own)


def test_batches_are_right_padded_and_cut_at_max_length(llama_folder, record_images):
    processor = Processor.from_pretrained(llama_folder)
    short = {"id": "short", "conversations": [H("Hi"), G("Yes")]}
    long = {"id": "long", "image": "tall.png", "conversations": [H("<image>\nDescribe it."), G("A picture " * 20)]}
    out = training.batch(processor, [short, long], image_folder=record_images)
    n = int(out["attention_mask"][0].sum())
    assert out["attention_mask"][0, :n].all() and not out["attention_mask"][0, n:].any()
    assert (out["input_ids"][0, n:] == processor.pad_token_id).all() and (out["labels"][0, n:] == -100).all()
    cut = training.batch(processor, [short, long], image_folder=record_images, max_length=60)
    assert cut["input_ids"].shape[1] == 60 and torch.equal(cut["labels"][1], out["labels"][1, :60])
    with pytest.raises(TrainingError, match="'long'.*cut into its image"):
        training.batch(processor, [long], image_folder=record_images, max_length=40)


@pytest.mark.parametrize("record, message", [
    ({"id": "a", "conversations": [G("Hi"), H("Hello")]}, "'a'.*turn 0: from 'gpt', expected 'human'"),
    ({"id": "b", "conversations": [H("Hi"), H("Hello"), G("Yes")]}, "'b'.*turn 1: from 'human', expected 'gpt'"),
    ({"id": "c", "image": "wide.png", "conversations": [H("Hi"), G("<image> here")]}, "'c'.*turn 1: an <image> marker"),
    ({"id": "d", "conversations": [H("<image>\nHi"), G("Hello")]}, "'d'.*<image> in the text but no 'image'"),
    ({"id": "e", "image": "missing.png", "conversations": [H("<image>\nHi"), G("Hello")]}, "'e'.*file not found"),
    ({"id": "f", "image": "broken.png", "conversations": [H("<image>\nHi"), G("Hello")]}, "'f'.*cannot be read"),
    ({"id": "g", "conversations": [H("Hi"), G("  ")]}, "'g'.*turn 1 \\(gpt\\): the value is empty"),
    ({"id": "h", "conversations": []}, "'h'.*non-empty 'conversations'"),
    ({"id": "i"}, "'i'.*non-empty 'conversations'"),
    ({"id": "j", "conversations": [H("Hi"), G("Yes"), H("And?")]}, "'j'.*ends with a human turn"),
    ({"id": "k", "image": "wide.png", "conversations": [H("Hi"), G("Yes")]}, "'k'.*0 <image> markers"),
    ({"id": "l", "conversations": [H("Hi"), {"from": "system", "value": "x"}]}, "'l'.*turn 1: expected"),
])
def test_bad_records_are_refused_by_name(record, message, record_images):
    (record_images / "broken.png").write_bytes(b"not a png")
    processor = Processor.from_pretrained(minillava.DEMO)
    good = {"id": "ok", "conversations": [H("Hi"), G("Hello")]}
    with pytest.raises(TrainingError, match=message):
        training.batch(processor, [good, record], image_folder=record_images)


def test_bad_settings_are_refused(record_images):
    processor = Processor.from_pretrained(minillava.DEMO)
    good = {"id": "ok", "image": "wide.png", "conversations": [H("<image>\nHi"), G("Hello"), H("And?"), G("No")]}
    with pytest.raises(TrainingError, match="format 'llava'"):
        training.batch(processor, [good], format="llava")
    with pytest.raises(TrainingError, match="'ok'.*plain format.*got 4 turns"):
        training.batch(processor, [good], image_folder=record_images, format="plain")
    with pytest.raises(TrainingError, match="non-empty list"):
        training.batch(processor, [])
    bos_first = "{{ bos_token }}{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}"
    with pytest.raises(PromptError, match="writes the BOS token"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                      chat_template=bos_first, tokenize=True)


def old_demo_batch(processor, convs):
    """The demo's batches as conversations.batch made them before minillava.training: each answer found by
    tokenizing the prompt before it and the prompt + answer, and counting."""
    images = [c["image"] for c in convs if c["image_turn"] is not None]
    pv = processor.preprocess(images) if images else None
    expand = "<image>" * (processor.num_image_tokens(*pv.shape[-2:]) if images else 0)
    encode = lambda t: processor.tokenizer.encode(t.replace("<image>", expand)).ids
    seqs, labels = [], []
    for c in convs:
        prompts, text = conversations.render(c)
        ids = encode(text)
        lab = [-100] * len(ids)
        ends = [len(encode(p + " " + a)) for p, (_, a) in zip(prompts[:-1], c["turns"][:-1])] + [len(ids)]
        for p, end in zip(prompts, ends):
            start = len(encode(p))
            assert ids[:start] == encode(p)
            lab[start:end] = ids[start:end]
        seqs.append(ids)
        labels.append(lab)
    T = max(map(len, seqs))
    ids, lab = torch.full((len(seqs), T), processor.pad_token_id), torch.full((len(seqs), T), -100)
    for i, (s, labelled) in enumerate(zip(seqs, labels)):
        ids[i, :len(s)], lab[i, :len(labelled)] = torch.tensor(s), torch.tensor(labelled)
    return ids, lab, pv


def test_demo_batches_are_bit_identical_to_the_old_ones():
    """1,000 drawn demo conversations (captions and chats): the shipped demo needs no retraining."""
    processor = Processor.from_pretrained(minillava.DEMO)
    rng = random.Random(5)
    convs = [conversations.draw(rng, 1 if i % 8 == 0 else 2) for i in range(1000)]
    assert sum(c["image_turn"] is None for c in convs) >= 10 and sum(len(c["turns"]) >= 4 for c in convs) >= 100
    for start in range(0, len(convs), 8):
        chunk = convs[start:start + 8]
        new, old = conversations.batch(processor, chunk), old_demo_batch(processor, chunk)
        for a, b in zip(new, old):
            assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b))
