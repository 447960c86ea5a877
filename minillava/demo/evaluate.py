"""How well the demo answers: multi-turn conversations about held-out images, in trained and withheld wordings.

Every turn is scored by exact match of the greedy answer. The history before a turn is the model's OWN earlier
answers, as in a chat (`minillava chat`, ChatSession): a wrong first answer stays in the prompt of the second
question. All conversations advance turn by turn together, so each turn position is one batched pass.

    python -m minillava.demo.train --eval FOLDER
"""
import json
import random
from pathlib import Path

import torch

from ..chat import format_conversation
from ..generation import generate
from . import shapes, wordings
from .conversations import _any_question, messages

TURN_POSITIONS = ("first", "second", "third or later")
VALIDATION_SEED = 2 * 10**9  # the training curve's conversations; the test ones start at shapes.SEED_BASE["test"]


def conversation_set(base=shapes.SEED_BASE["test"], n_trained=240, n_withheld=240, n_casual=60, n_later=60,
                     n_no_image=48):
    """Fixed conversations about images drawn from seeds base, base + 1, ..., in parts: n_trained in trained
    wordings, n_withheld in withheld ones, n_casual in trained wordings written in lower case without the final
    question mark or full stop, n_later whose image comes with the second or third question (the questions before
    it are asked with no image); 1 to 4 questions about the image each, of kinds drawn uniformly. Then n_no_image
    single questions asked without an image (half of them in withheld wordings)."""
    parts = ["trained"] * n_trained + ["withheld"] * n_withheld + ["casual"] * n_casual + ["later image"] * n_later
    convs = [_conversation(random.Random(base + i), part, 1 + i % 4) for i, part in enumerate(parts)]
    for j in range(n_no_image):
        rng = random.Random(base + len(parts) + j)
        _, (question, _) = _any_question(rng, [], wordings.WITHHELD if j % 2 else wordings.TRAINED)
        convs.append(dict(image=None, turns=[(question, shapes.NO_IMAGE)], kinds=["no_image"], image_turn=None,
                          part="no image"))
    return convs


def _conversation(rng, part, n_questions):
    """One conversation of `part` (see conversation_set) with n_questions about its image."""
    image, objects = shapes.draw_scene(rng)
    turns, kinds, image_turn = [], [], 0
    if part == "later image":
        image_turn = rng.randint(1, 2)
        for _ in range(image_turn):
            _, (question, _) = _any_question(rng, turns)
            turns.append((question, shapes.NO_IMAGE))
            kinds.append("no_image")
    templates = wordings.WITHHELD if part == "withheld" else wordings.TRAINED
    while len(turns) < image_turn + n_questions:
        kind = rng.choice(shapes.KINDS)
        qa = shapes.ask(rng, objects, kind, templates)
        if qa and qa[0] not in [q for q, _ in turns] and not (kind == "count" and "count" in kinds):
            question = wordings.casual(qa[0]) if part == "casual" else qa[0]
            turns.append((question, qa[1]))
            kinds.append(kind)
    return dict(image=image, turns=turns, kinds=kinds, image_turn=image_turn, part=part)


@torch.no_grad()
def answer_all(model, processor, convs, batch_size=64, max_new_tokens=48):
    """Greedy answers to every turn of every conversation, each asked after the model's own earlier answers.
    Returns one record per turn: dict(kind, turn, part, question, reference, answer)."""
    was_training = model.training
    model.eval()
    own = [[] for _ in convs]
    records = []
    for t in range(max(len(c["turns"]) for c in convs)):
        active = [i for i, c in enumerate(convs) if len(c["turns"]) > t]
        for k in range(0, len(active), batch_size):
            chunk = active[k:k + batch_size]
            prompts = [format_conversation(messages(convs[i], t + 1, own[i])) for i in chunk]
            images = [convs[i]["image"] for i in chunk
                      if convs[i]["image_turn"] is not None and convs[i]["image_turn"] <= t]
            inputs = processor(text=prompts, images=images or None)
            out = generate(model, inputs["input_ids"], inputs.get("pixel_values"), inputs["attention_mask"],
                           max_new_tokens=max_new_tokens)
            for i, ids in zip(chunk, out):
                answer = processor.decode(ids, skip_special_tokens=True).strip()
                own[i].append(answer)
                c = convs[i]
                records.append(dict(kind=c["kinds"][t], turn=t, part=c["part"], question=c["turns"][t][0],
                                    reference=c["turns"][t][1], answer=answer))
    model.train(was_training)
    return records


def summarize(records):
    """Accuracies: with trained wordings overall, per kind and per turn position; with withheld wordings overall
    and per kind; the casual questions and the questions about an image given in a later turn; the questions
    whose answer is a "no" ("No.", "There is no ...") and the yes/no questions (trained wordings); every question
    asked without an image. Each entry is [accuracy, number of questions]."""
    def acc(rs):
        return [round(sum(r["answer"] == r["reference"] for r in rs) / len(rs), 4), len(rs)] if rs else [None, 0]
    def part(name):
        return [r for r in records if r["part"] == name and r["kind"] != "no_image"]
    trained, withheld = part("trained"), part("withheld")
    out = {"trained": {"overall": acc(trained)}, "withheld": {"overall": acc(withheld)}}
    for kind in shapes.KINDS:
        out["trained"][kind] = acc([r for r in trained if r["kind"] == kind])
        out["withheld"][kind] = acc([r for r in withheld if r["kind"] == kind])
    for t, name in enumerate(TURN_POSITIONS):
        out["trained"][name] = acc([r for r in trained if min(r["turn"], 2) == t])
    is_no = lambda r: r["reference"] == "No." or r["reference"].startswith("There is no")
    out["no answers"] = acc([r for r in trained if is_no(r)])
    out["yes/no"] = acc([r for r in trained if r["kind"] == "exists"])
    out["lower case, no question mark"] = acc(part("casual"))
    out["image in a later turn"] = acc(part("later image"))
    out["no image"] = acc([r for r in records if r["kind"] == "no_image"])
    return out


def evaluate(model, processor, convs=None):
    """The summary on `convs` (default: the held-out test conversations) and the per-turn records."""
    records = answer_all(model, processor, conversation_set() if convs is None else convs)
    return summarize(records), records


def table(summary):
    """The summary as a markdown table (the README's)."""
    pct = lambda x: "" if x[0] is None else f"{x[0]:.1%} ({x[1]})"
    rows = ["| held-out images | trained wordings | withheld wordings |", "|---|---:|---:|"]
    for kind in shapes.KINDS + ["overall"]:
        rows.append(f"| {kind} | {pct(summary['trained'][kind])} | {pct(summary['withheld'][kind])} |")
    for name in TURN_POSITIONS:
        rows.append(f"| {name} turn | {pct(summary['trained'][name])} | |")
    for name in ("no answers", "yes/no", "lower case, no question mark", "image in a later turn"):
        rows.append(f"| {name} | {pct(summary[name])} | |")
    rows.append(f"| no image (both wordings) | {pct(summary['no image'])} | |")
    return "\n".join(rows)


def plot_curve(folder):
    """training_curve.png: validation accuracy against training steps (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    log = json.loads((Path(folder) / "training_log.json").read_text())
    fig, ax = plt.subplots(figsize=(7, 3.2))
    steps = [c["step"] for c in log["curve"]]
    for kind in shapes.KINDS:
        ax.plot(steps, [c["trained"][kind][0] for c in log["curve"]], label=kind, lw=1)
    ax.plot(steps, [c["trained"]["overall"][0] for c in log["curve"]], label="overall", lw=2.5, color="k")
    ax.plot(steps, [c["withheld"]["overall"][0] for c in log["curve"]], label="withheld wordings", lw=2, color="k",
            ls="--")
    for boundary in log["stage_starts"][1:]:
        ax.axvline(boundary, color="grey", lw=0.5)
    ax.set_xlabel("training step (batch 32): stage 0 = tower, 1 = captions, 2 = conversations")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(Path(folder) / "training_curve.png", dpi=70)
