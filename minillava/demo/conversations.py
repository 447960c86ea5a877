"""Conversations about one drawn image, rendered with the chat template and batched for training.

A conversation is dict(image, turns, kinds, image_turn): `turns` is a list of (question, answer); the image
(or None) comes with the user message of turn `image_turn`. Earlier turns have no image to look at and are
answered shapes.NO_IMAGE. The text is rendered by minillava.chat.format_conversation, the same code that
renders a chat for the model at inference, so training and use see the very same prompt strings.
"""
import random

from .. import training
from ..chat import format_conversation, user_message
from . import shapes, wordings

# how often each kind of question is asked in stage 2, per turn (the ones that bind colour and shape, more)
STAGE2_KINDS = {"colour": 2, "shape": 2, "count": 1, "count_of": 3, "position": 4, "description": 1.2,
                "exists": 2.5, "absent": 2}
TURNS = {1: 3, 2: 3, 3: 3, 4: 2, 5: 1}  # relative frequency of each conversation length in stage 2
NO_IMAGE_SHARE = 0.06  # stage-2 conversations that start with questions asked before any image is given
# The share of stage-2 scenes whose shapes share colours and shapes (shapes.draw_scene(confusable=True)).
# In natural scenes most position questions can be answered from the colour or the shape alone; without
# these the model never learns to bind the two and answers with the place of another green shape.
CONFUSABLE = 0.5
# shares of stage-2 questions varied by `vary`: one word dropped, one word swapped for a filler, a lead-in; and,
# on top of those, written casually (lower case, no question mark)
WORD_DROP, WORD_SWAP, LEAD_IN, CASUAL = 0.15, 0.15, 0.1, 0.1
# what a question is about: never dropped or swapped ("a red square" asks whether there is one, "the red square" where)
KEY_WORDS = {*shapes.COLORS, *shapes.SHAPES, *(s + "s" for s in shapes.SHAPES), "a", "an", "the", "how", "many"}


def draw(rng, stage):
    """A training conversation. Stage 1: one caption. Stage 2: 1-5 questions of any kind, in any order, about
    one image (LLaVA-1.5 also packs the questions about one image into one conversation), sometimes after
    questions asked before the image was given. Seeds stay below shapes.SEED_BASE["test"]."""
    scene = random.Random(rng.randrange(shapes.SEED_BASE["test"]))
    image, objects = shapes.draw_scene(scene, confusable=stage == 2 and rng.random() < CONFUSABLE)
    if stage == 1:
        return dict(image=image, turns=[shapes.ask(rng, objects, "description")], kinds=["description"], image_turn=0)
    image_turn = 0
    turns, kinds = [], []
    if rng.random() < NO_IMAGE_SHARE:
        for _ in range(rng.randint(1, 2)):
            kind, (question, _) = _any_question(rng, turns)
            turns.append((vary(rng, question), shapes.NO_IMAGE))
            kinds.append("no_image")
        if rng.random() < 0.5:  # the image never comes: every question is answered honestly
            return dict(image=None, turns=turns, kinds=kinds, image_turn=None)
        image_turn = len(turns)
    n = image_turn + rng.choices(list(TURNS), list(TURNS.values()))[0]
    while len(turns) < n:
        kind = rng.choices(list(STAGE2_KINDS), list(STAGE2_KINDS.values()))[0]
        qa = shapes.ask(rng, objects, kind)
        if qa and qa[0] not in [q for q, _ in turns] and not (kind == "count" and "count" in kinds):
            turns.append((vary(rng, qa[0]), qa[1]))
            kinds.append(kind)
    return dict(image=image, turns=turns, kinds=kinds, image_turn=image_turn)


def vary(rng, question):
    """A trained wording, sometimes varied so that the model keys on the words that carry the question (colours,
    shapes, articles, "how many") rather than on the exact template and passes over words it does not know: one
    word dropped (never the first) or swapped for a word of wordings.FILLERS, or a lead-in before it (wordings.LEAD_INS
    or a filler); then, sometimes, written in lower case without the final question mark or full stop."""
    words = question.split()
    free = [i for i, w in enumerate(words) if w.strip("?.,:").lower().removesuffix("'s") not in KEY_WORDS]
    r = rng.random()
    if r < WORD_DROP and len(words) > 3 and [i for i in free if i]:
        i = rng.choice([i for i in free if i])
        if i == len(words) - 1:  # the last word: its "?" or "." stays
            words[i - 1] += words[i][len(words[i].rstrip("?.")):]
        words = words[:i] + words[i + 1:]
    elif r < WORD_DROP + WORD_SWAP and free:
        i = rng.choice(free)
        filler = rng.choice(wordings.FILLERS)
        words[i] = (filler.capitalize() if i == 0 else filler) + words[i][len(words[i].rstrip("?.,:")):]
    elif r < WORD_DROP + WORD_SWAP + LEAD_IN:
        lead = rng.choice(wordings.LEAD_INS) if rng.random() < 0.7 else rng.choice(wordings.FILLERS).capitalize() + ","
        words = [lead, wordings.uncapitalize(words[0])] + words[1:]
    question = " ".join(words)
    if rng.random() < CASUAL:
        question = wordings.casual(question)
    return question


def batches(rng, stage, batch_size, pool=8):
    """Endless training batches (lists of conversations) of similar length: `pool` batches' worth are drawn,
    sorted by length and cut, then handed out in random order. Padding is then about a tenth of a batch
    instead of a third (a conversation is 36 image tokens and 1 to 5 turns)."""
    while True:
        convs = sorted((draw(rng, stage) for _ in range(batch_size * pool)),
                       key=lambda c: sum(len(q) + len(a) for q, a in c["turns"]) + 150 * (c["image"] is not None))
        chunks = [convs[i:i + batch_size] for i in range(0, len(convs), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def _any_question(rng, turns, templates=wordings.TRAINED):
    """A question of any kind about a random scene (its answer is not used: there is no image to look at)."""
    while True:
        kind = rng.choice(shapes.KINDS)
        qa = shapes.ask(rng, shapes.draw_scene(rng)[1], kind, templates)
        if qa and qa[0] not in [q for q, _ in turns]:
            return kind, qa


def messages(conversation, n_turns=None, answers=None):
    """The chat messages of the first n_turns user turns (and the answers between them, by default the
    reference answers), ending with a user message: what format_conversation renders into a prompt."""
    turns = conversation["turns"][:n_turns]
    answers = [a for _, a in turns] if answers is None else answers
    out = []
    for i, (question, _) in enumerate(turns):
        if i:
            out.append({"role": "assistant", "content": [{"type": "text", "text": answers[i - 1]}]})
        out.append(user_message(question, int(i == conversation["image_turn"])))
    return out


def render(conversation):
    """The prompt of every turn ("USER: <image>\\n{q1} ASSISTANT:", "... ASSISTANT: {a1} USER: {q2} ASSISTANT:", ...)
    and the whole text: the last prompt, the last answer and "</s>". The llava-1.5 template puts no "</s>" between
    turns; the one after the last answer is what teaches the model to stop."""
    prompts = [format_conversation(messages(conversation, i + 1)) for i in range(len(conversation["turns"]))]
    return prompts, prompts[-1] + " " + conversation["turns"][-1][1] + "</s>"


def batch(processor, conversations):
    """Right-padded training batch: ids, labels (-100 except on each answer, with the space before it, and the final
    </s>), pixel_values (None when no conversation of the batch has an image). minillava.training.encode makes the
    labels from the characters of the answers in the rendered text, as it does for every training format."""
    images = [c["image"] for c in conversations if c["image_turn"] is not None]
    pv = processor.preprocess(images) if images else None
    n = processor.num_image_tokens(*pv.shape[-2:]) if images else 0
    rows = []
    for c in conversations:
        prompts, text = render(c)
        # each prompt ends "ASSISTANT:"
        spans = [(len(p), len(p) + len(" " + a)) for p, (_, a) in zip(prompts, c["turns"])]
        spans[-1] = (spans[-1][0], len(text))  # the last answer and the "</s>" after it
        rows.append(training.encode(processor, text, spans, n))
    out = training.collate(processor, rows, pv)
    return out["input_ids"], out["labels"], out["pixel_values"]
