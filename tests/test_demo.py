"""The embedded demo: the official layout (transformers loads it and agrees), its training data and evaluation
are what they claim (held-out seeds and withheld wordings never trained, labels only on answers), and it answers."""
import json
import random
import re

import pytest
import torch

import minillava
from minillava.chat import format_conversation
from minillava.demo import conversations, evaluate, shapes, wordings
from minillava.demo.tokenizer import PLACES

DEMO = minillava.DEMO
LOG = json.loads((DEMO / "training_log.json").read_text())


@pytest.fixture(scope="module")
def loaded():
    return minillava.load()  # no path: the demo


def test_demo_is_small_and_complete():
    size = sum(f.stat().st_size for f in DEMO.iterdir() if f.is_file())
    assert size <= 20 * 2**20
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json", "processor_config.json",
                 "chat_template.json", "generation_config.json", "training_log.json", "example.png"):
        assert (DEMO / name).is_file(), name


@torch.no_grad()
def test_transformers_loads_the_demo_and_agrees(loaded):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model, processor = loaded
    ref = LlavaForConditionalGeneration.from_pretrained(DEMO, dtype=torch.float32).eval()
    ref_processor = AutoProcessor.from_pretrained(DEMO)
    convs = evaluate.conversation_set(n_trained=8, n_withheld=4, n_casual=2, n_later=2, n_no_image=2)
    convs = [c for c in convs if c["image"] is not None] + [c for c in convs if c["image"] is None]
    # every turn position, the model's prompts rendered by transformers' jinja template and by minillava
    texts = [ref_processor.apply_chat_template(conversations.messages(c, len(c["turns"])), add_generation_prompt=True)
             for c in convs]
    assert texts == [format_conversation(conversations.messages(c, len(c["turns"]))) for c in convs]
    assert any(t.count("USER:") == 4 for t in texts) and not any("<image>" in t for t in texts[-2:])
    images = [c["image"] for c in convs if c["image"] is not None]
    want = ref_processor(text=texts, images=images, padding=True, return_tensors="pt")
    got = processor(text=texts, images=images)
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert (got["pixel_values"] - want["pixel_values"]).abs().max() <= 1e-6
    logits = model(got["input_ids"], got["pixel_values"], attention_mask=got["attention_mask"])
    ref_logits = ref(**want).logits
    real = got["attention_mask"].bool()
    assert (logits[real] - ref_logits[real]).abs().max() <= 1e-4
    # a text-only prompt: no <image> token, no pixel values
    text = format_conversation([{"role": "user", "content": "What color is the circle?"}])
    want = ref_processor(text=[text], return_tensors="pt")
    got = processor(text=text)
    assert torch.equal(got["input_ids"], want["input_ids"]) and "pixel_values" not in got
    assert (model(got["input_ids"]) - ref(**want).logits).abs().max() <= 1e-4


def test_tokenizer_keeps_two_word_places_whole(loaded):
    _, processor = loaded
    for place in PLACES:
        ids = processor.tokenizer.encode(f"ASSISTANT: {place}", add_special_tokens=False).ids
        assert processor.decode(ids[-1:]) == place


def test_render_is_the_llava_template_by_hand():
    # what the training text was before it used format_conversation: the llava-1.5 template written out
    def by_hand(turns):
        prompts, text = [], ""
        for i, (q, a) in enumerate(turns):
            text += ("USER: <image>\n" if i == 0 else " USER: ") + q + " ASSISTANT:"
            prompts.append(text)
            text += " " + a
        return prompts, text + "</s>"
    rng = random.Random(0)
    convs = [conversations.draw(rng, stage) for stage in (1, 2, 2, 2, 2, 2, 2, 2, 2, 2)]
    assert any(len(c["turns"]) >= 3 for c in convs)
    for c in convs:
        if c["image_turn"] == 0:
            assert conversations.render(c) == by_hand(c["turns"])


def test_batches_label_only_the_answers(loaded):
    _, processor = loaded
    rng = random.Random(1)
    convs = [conversations.draw(rng, 2) for _ in range(200)]
    late = [c for c in convs if c["image_turn"] not in (0, None)][:2]  # the image comes with a later question
    no_image = [c for c in convs if c["image_turn"] is None][:2]
    convs = late + no_image + [c for c in convs if len(c["turns"]) >= 4][:3]
    assert len(late) == 2 and len(no_image) == 2
    ids, labels, pv = conversations.batch(processor, convs)
    assert pv.shape[0] == len(convs) - 2  # one image per conversation that has one
    n = processor.num_image_tokens(*pv.shape[-2:])
    for c, row, lab in zip(convs, ids.tolist(), labels.tolist()):
        spans, span = [], []
        for t, label in zip(row, lab):
            assert label in (-100, t)
            if label != -100:
                span.append(t)
            elif span:
                spans.append(span)
                span = []
        spans += [span] if span else []
        answers = [a for _, a in c["turns"]]
        assert [processor.decode(s) for s in spans] == answers[:-1] + [answers[-1] + "</s>"]
        text = processor.decode([t for t in row if t != processor.pad_token_id])
        assert text.count("<image>") == (n if c["image_turn"] is not None else 0)
        assert text.count("USER:") == len(c["turns"])
    # a batch with no image at all
    ids, labels, pv = conversations.batch(processor, no_image)
    assert pv is None and not (ids == processor.image_token_id).any()


def words(text):
    return set(re.findall(r"[a-z']+", text.lower()))


def capitalized(text):
    return text if text.split()[0] == "I" else text[0].upper() + text[1:]


def trained_wording(texts):
    """A test of a question: is it a trained text, or one varied by conversations.vary (one word dropped, never the
    first, or swapped for a filler; or a lead-in, or a filler and a comma, before it; then perhaps in lower case
    with no final mark)?"""
    leads = [lead + " " for lead in wordings.LEAD_INS] + [f.capitalize() + ", " for f in wordings.FILLERS]
    split = [[w.rstrip("?.") for w in t.split()] for t in texts]  # a dropped last word leaves its "?" to the one before
    dropped = {tuple(ws[:i] + ws[i + 1:]) for ws in split for i in range(1, len(ws))}
    swapped = {tuple(ws[:i] + ["*"] + ws[i + 1:]) for ws in split for i in range(len(ws))}

    def test(question):
        for q in [capitalized(question + end) for end in ([""] if question.endswith(("?", ".")) else ["?", "."])]:
            if q in texts or any(q.startswith(lead) and capitalized(q[len(lead):]) in texts for lead in leads):
                return True
            ws = [w.rstrip("?.") for w in q.split()]
            if tuple(ws) in dropped or any(tuple(ws[:i] + ["*"] + ws[i + 1:]) in swapped for i, w in enumerate(ws)
                                           if w.rstrip(",:").lower() in wordings.FILLERS):
                return True
        return False
    return test


def test_withheld_wordings_are_never_trained():
    for kind in wordings.TRAINED:
        assert len(wordings.TRAINED[kind]) >= 25 and len(wordings.WITHHELD[kind]) >= 12, kind
    assert sum(map(len, wordings.WITHHELD.values())) >= 96
    trained = {t for ts in wordings.TRAINED.values() for t in ts}
    withheld = {t for ts in wordings.WITHHELD.values() for t in ts}
    assert not trained & withheld
    texts = set(shapes.trained_texts())  # what the tokenizer learns from
    # every word training uses
    known = set().union(*map(words, texts), *map(words, wordings.LEAD_INS), wordings.FILLERS)
    # each withheld wording has a word training never uses, or (another word order) is no variation of a trained text
    fills = dict(shape="circle", color="red", what="blue shapes", obj="a green square")
    unknown = {t: words(t.format(**fills)) - known for t in withheld}
    is_trained = trained_wording(texts)
    assert all(unknown[t] or not is_trained(t.format(**fills)) for t in withheld)
    assert sum(bool(u) for u in unknown.values()) >= 0.9 * len(withheld)
    only_withheld = evaluate.conversation_set(n_trained=0, n_withheld=60, n_casual=0, n_later=0, n_no_image=0)
    withheld_questions = [q for c in only_withheld for q, _ in c["turns"]]
    assert not texts & set(withheld_questions)
    assert not any(map(is_trained, withheld_questions))
    rng = random.Random(2)
    trained_questions = [q for _ in range(300) for q, _ in conversations.draw(rng, 2)["turns"]]
    assert all(map(is_trained, trained_questions))
    assert sum(q not in texts for q in trained_questions) > 0.25 * len(trained_questions)  # varied ones are there
    # the README's and the CLI help's example questions are trained
    for q in ("What color is the circle?", "What is shown here?", "What is in this picture?", "What is in the image?",
              "Describe the image.", "How many shapes are there?", "Where is the red triangle?"):
        assert q in texts, q


def test_vary_keeps_what_a_question_asks():
    rng = random.Random(4)
    question = "Where is the red circle in the image?"
    varied = [conversations.vary(rng, question) for _ in range(2000)]
    for q in varied:  # (a lead-in may add a "the")
        key_words = [w for w in re.findall(r"[a-z]+", q) if w in conversations.KEY_WORDS]
        assert key_words[-4:] == ["the", "red", "circle", "the"], q
    swapped = [q for q in varied if words(q) & set(wordings.FILLERS)]
    assert 0.15 < len(swapped) / len(varied) < 0.3  # swapped words and filler lead-ins
    assert 0.05 < sum(not q.endswith("?") and q[0].islower() for q in varied) / len(varied) < 0.15  # casual
    assert 0.4 < varied.count(question) / len(varied) < 0.6


def test_held_out_seeds_never_overlap_training(monkeypatch):
    seeds = []

    class Recording(random.Random):
        def __init__(self, seed=None):
            seeds.append(seed)
            super().__init__(seed)
    monkeypatch.setattr(conversations.random, "Random", Recording)
    rng = random.Random(3)
    for stage in (1, 2) * 100:
        conversations.draw(rng, stage)
    assert seeds and max(seeds) < shapes.SEED_BASE["test"]
    seeds.clear()
    evaluate.conversation_set(n_trained=5, n_withheld=5, n_casual=5, n_later=5, n_no_image=5)
    test = set(seeds)
    seeds.clear()
    evaluate.conversation_set(evaluate.VALIDATION_SEED, n_trained=48, n_withheld=24, n_casual=8, n_later=8,
                              n_no_image=8)
    assert min(test) == shapes.SEED_BASE["test"] and max(test) < evaluate.VALIDATION_SEED <= min(seeds)


def test_evaluation_covers_every_kind_and_turn():
    convs = evaluate.conversation_set()
    records = [dict(kind=c["kinds"][t], turn=t, part=c["part"], question=q, reference=a, answer=a)
               for c in convs for t, (q, a) in enumerate(c["turns"])]
    summary = evaluate.summarize(records)
    for part, least in (("trained", 20), ("withheld", 40)):
        for kind in shapes.KINDS:
            share, count = summary[part][kind]
            assert share == 1.0 and count >= least, (part, kind)
    for name in evaluate.TURN_POSITIONS:
        assert summary["trained"][name][1] >= 150
    assert summary["no answers"][1] >= 80 and summary["yes/no"][1] >= 50 and summary["no image"][1] >= 40
    assert summary["lower case, no question mark"][1] >= 100 and summary["image in a later turn"][1] >= 100
    for c in convs:  # each part is what it says
        questions = [q for q, _ in c["turns"]]
        if c["part"] == "casual":
            assert all(q[0].islower() or q.startswith("I ") for q in questions)
            assert not any(q.endswith(("?", ".")) for q in questions)
        if c["part"] == "later image":
            assert c["image_turn"] in (1, 2) and c["kinds"][:c["image_turn"]] == ["no_image"] * c["image_turn"]
            assert [a for _, a in c["turns"][:c["image_turn"]]] == [shapes.NO_IMAGE] * c["image_turn"]
            assert shapes.NO_IMAGE not in [a for _, a in c["turns"][c["image_turn"]:]]
    records[0]["answer"] = "wrong"
    assert evaluate.summarize(records)["trained"]["overall"][0] < 1.0


def test_demo_answers_held_out_conversations(loaded):
    model, processor = loaded
    convs = evaluate.conversation_set(n_trained=60, n_withheld=60, n_casual=15, n_later=15, n_no_image=12)  # a quarter
    summary, _ = evaluate.evaluate(model, processor, convs)
    test = LOG["test"]
    assert summary["trained"]["overall"][0] >= test["trained"]["overall"][0] - 0.05, (summary, test)
    assert summary["withheld"]["overall"][0] >= test["withheld"]["overall"][0] - 0.08, (summary, test)
    for name in ("lower case, no question mark", "image in a later turn", "no image"):
        assert summary[name][0] >= test[name][0] - 0.08, (name, summary, test)
    # the README quotes the full evaluation of the training log
    readme = (DEMO.parent.parent / "README.md").read_text()
    assert f"{test['trained']['overall'][0]:.1%}" in readme and f"{test['withheld']['overall'][0]:.1%}" in readme


def test_dataset_is_deterministic():
    a, b = shapes.split("test", 20), shapes.split("test", 20)
    assert [(x["question"], x["answer"]) for x in a] == [(x["question"], x["answer"]) for x in b]
    assert all((x["image"].tobytes() == y["image"].tobytes()) for x, y in zip(a, b))
    assert [x["kind"] for x in a[:8]] == shapes.KINDS


def test_answers_are_true_to_the_scene():
    for seed in range(200):
        ex = shapes.sample(seed)
        objects, q, a = ex["objects"], ex["question"], ex["answer"]
        pairs = {(o["color"], o["shape"]) for o in objects}
        if ex["kind"] == "exists":
            color = next((c for c in shapes.COLORS if re.search(rf"\b{c}\b", q)), None)
            shape = next((s for s in shapes.SHAPES if re.search(rf"\b{s}\b", q)), None)
            there = any((color in (None, c)) and (shape in (None, s)) for c, s in pairs)
            assert a == ("Yes." if there else "No."), (q, pairs)
        if ex["kind"] == "absent":
            named = a[len("There is no "):-1].replace(" shape", "").split()
            assert not any(all(w in (c, s) for w in named) for c, s in pairs), (q, a, pairs)


def test_confusable_scenes_share_colours_and_shapes():
    # training-only scenes where a position question needs colour and shape together
    for seed in range(30):
        objects = shapes.sample(seed, "position", confusable=True)["objects"]
        pairs = [(o["color"], o["shape"]) for o in objects]
        assert len(set(pairs)) == len(pairs)  # still no (colour, shape) pair twice
        for i, (color, shape) in enumerate(pairs):  # each shares its colour or its shape with another one
            assert len(pairs) == 1 or any(c == color or s == shape for j, (c, s) in enumerate(pairs) if j != i), pairs
