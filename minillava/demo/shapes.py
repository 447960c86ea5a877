"""A procedurally drawn image-question-answer dataset: coloured shapes on a 3 x 3 grid.

Every image holds 1 to 4 shapes (circle, square, triangle) in six colours, of varied size, each in its own
cell of an invisible 3 x 3 grid (with jitter), on a low-saturation background (flat, gradient or noisy).
No two shapes share both shape and colour. Eight kinds of question, each with one exact answer:

    colour       "What color is the circle?"            -> "red"       (the only circle in the image)
    shape        "What shape is the blue object?"       -> "square"    (the only blue shape)
    count        "How many shapes are there?"           -> "three"
    count_of     "How many red shapes are there?"       -> "two"       (or "How many circles ...?"; "zero" too)
    position     "Where is the green triangle?"         -> "bottom left"
    description  "Describe the image."                  -> "A red circle at the top left and a blue square in the
                                                            center."
    exists       "Is there a red square?"               -> "Yes." / "No."
    absent       "What color is the square?"            -> "There is no square."  (a colour, shape or position
                                                           question about something the image does not hold)

Each kind has trained wordings and withheld ones that training never uses (wordings.py), to measure how far
the model generalises to other ways of asking. Everything is a pure function of a seed:
`sample(seed)` draws one example, `split(name, n)` a fixed list. The held-out split ("test") uses seeds
that training never touches.
"""
import colorsys
import random

import numpy as np
from PIL import Image, ImageDraw

from .wordings import LEAD_INS, TRAINED, casual, uncapitalize

SHAPES = ["circle", "square", "triangle"]
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40), "purple": (140, 60, 190), "orange": (245, 140, 30)}
POSITIONS = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]]
# how a position reads inside a sentence ("... at the top left", "... in the center")
PHRASES = {"top left": "at the top left", "top": "at the top", "top right": "at the top right",
           "left": "on the left", "center": "in the center", "right": "on the right",
           "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right"}
NUMBERS = ["zero", "one", "two", "three", "four"]
KINDS = ["colour", "shape", "count", "count_of", "position", "description", "exists", "absent"]
NO_IMAGE = "I see no image."  # the answer to any question asked without an image
IMAGE_SIZE = 96
SEED_BASE = {"train": 0, "test": 10**9}  # disjoint seed ranges for training and the held-out split


def draw_scene(rng, size=IMAGE_SIZE, confusable=False):
    """Return (PIL image, list of objects); an object is a dict(shape, color, position, row, col).
    confusable=True (training only) makes every further shape share its colour or its shape with an earlier
    one, so that "Where is the green triangle?" cannot be answered by looking for green alone."""
    n = rng.choice([1, 2, 2, 3, 3, 4, 4])
    cells = rng.sample(range(9), n)
    combos = rng.sample([(s, c) for s in SHAPES for c in COLORS], n)  # no (shape, colour) pair twice
    if confusable:
        combos = combos[:1]
        while len(combos) < n:
            shape, color = rng.choice(combos)
            near = [(shape, c) for c in COLORS] + [(s, color) for s in SHAPES]
            combos.append(rng.choice([x for x in near if x not in combos]))
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    objects = []
    for (shape, color), k in zip(combos, cells):
        row, col = divmod(k, 3)
        r = cell * rng.uniform(0.28, 0.40)  # half the shape's width: a shape never leaves its cell
        cx = cell * (col + 0.5) + rng.uniform(-0.08, 0.08) * cell
        cy = cell * (row + 0.5) + rng.uniform(-0.08, 0.08) * cell
        fill = tuple(min(255, max(0, v + rng.randint(-18, 18))) for v in COLORS[color])
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            s = r * 0.9
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        objects.append(dict(shape=shape, color=color, position=POSITIONS[row][col], row=row, col=col))
    objects.sort(key=lambda o: (o["row"], o["col"]))  # reading order, used by the description
    return img, objects


def _background(rng, size):
    """A low-saturation background, so that it is never mistaken for one of the six shape colours."""
    h, s = rng.random(), rng.uniform(0.0, 0.2)
    v1, v2 = rng.uniform(0.25, 0.95), rng.uniform(0.25, 0.95)
    style = rng.choice(["flat", "gradient", "noise"])
    c1 = np.array(colorsys.hsv_to_rgb(h, s, v1)) * 255
    c2 = np.array(colorsys.hsv_to_rgb(h, s, v2)) * 255 if style == "gradient" else c1
    t = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
    arr = c1 + (c2 - c1) * t + np.zeros((size, size, 3))
    if style == "noise":
        arr = arr + np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


def describe(objects):
    parts = [f"{'an' if o['color'] == 'orange' else 'a'} {o['color']} {o['shape']} {PHRASES[o['position']]}"
             for o in objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def ask(rng, objects, kind, templates=TRAINED):
    """A (question, answer) pair of the given kind about these objects, in one of `templates` (wordings.TRAINED,
    wordings.WITHHELD or a dict like them), or None when this scene cannot be asked it (a colour question needs
    a shape that occurs once)."""
    def wording(k):
        return rng.choice(templates[k])
    n_color = {c: sum(o["color"] == c for o in objects) for c in COLORS}
    n_shape = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    pairs = [(o["color"], o["shape"]) for o in objects]
    if kind == "colour":  # ask about a shape type that occurs exactly once
        unique = [o for o in objects if n_shape[o["shape"]] == 1]
        o = rng.choice(unique) if unique else None
        return o and (wording("colour").format(shape=o["shape"]), o["color"])
    if kind == "shape":  # ask about a colour that occurs exactly once
        unique = [o for o in objects if n_color[o["color"]] == 1]
        o = rng.choice(unique) if unique else None
        return o and (wording("shape").format(color=o["color"]), o["shape"])
    if kind == "count":
        return wording("count"), NUMBERS[len(objects)]
    if kind == "count_of":  # of a colour (mostly one that is there) or of a shape type
        if rng.random() < 0.5:
            color = rng.choice([c for c in COLORS if n_color[c]] if rng.random() < 0.7 else list(COLORS))
            return wording("count_of").format(what=f"{color} shapes"), NUMBERS[n_color[color]]
        shape = rng.choice(SHAPES)
        return wording("count_of").format(what=shape + "s"), NUMBERS[n_shape[shape]]
    if kind == "position":
        o = rng.choice(objects)
        return wording("position").format(color=o["color"], shape=o["shape"]), o["position"]
    if kind == "description":
        return wording("description"), describe(objects)
    if kind == "exists":  # yes or no, half each; a full "colour shape" phrase, a shape alone or a colour alone
        form = rng.choices(["pair", "shape", "color"], [3, 1, 1])[0]
        names = {"pair": [f"{c} {s}" for c, s in pairs], "shape": [s for _, s in pairs],
                 "color": [f"{c} shape" for c, _ in pairs]}[form]
        if rng.random() < 0.5:
            return wording("exists").format(obj=article(rng.choice(names))), "Yes."
        others = {"pair": [f"{c} {s}" for c, s in _missing_pairs(rng, pairs)],
                  "shape": [s for s in SHAPES if not n_shape[s]],
                  "color": [f"{c} shape" for c in COLORS if not n_color[c]]}[form]
        return others and (wording("exists").format(obj=article(rng.choice(others))), "No.")
    if kind == "absent":  # a colour, shape or position question about something that is not there
        borrowed = rng.choice(["colour", "shape", "position"])
        if borrowed == "colour":
            missing = [s for s in SHAPES if not n_shape[s]]
            s = rng.choice(missing) if missing else None
            return s and (wording("colour").format(shape=s), f"There is no {s}.")
        if borrowed == "shape":
            c = rng.choice([c for c in COLORS if not n_color[c]])
            return wording("shape").format(color=c), f"There is no {c} shape."
        c, s = rng.choice(_missing_pairs(rng, pairs))
        return wording("position").format(color=c, shape=s), f"There is no {c} {s}."
    raise ValueError(f"unknown question kind {kind!r}, expected one of {KINDS}")


def _missing_pairs(rng, pairs):
    """(colour, shape) pairs not in the image; mostly near misses that share a colour or a shape with one
    that is, so that a "no" needs the colour and the shape bound together."""
    missing = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in pairs]
    near = [(c, s) for c, s in missing if any(c == c2 or s == s2 for c2, s2 in pairs)]
    return near if near and rng.random() < 0.7 else missing


def sample(seed, kind=None, size=IMAGE_SIZE, confusable=False, templates=TRAINED):
    """One example: dict(image, question, answer, kind, objects), a pure function of `seed`.
    With kind=None the kind is drawn uniformly; scenes that cannot answer it are redrawn."""
    rng = random.Random(seed)
    kind = kind or rng.choice(KINDS)
    while True:
        img, objects = draw_scene(rng, size, confusable)
        qa = ask(rng, objects, kind, templates)
        if qa:
            return dict(image=img, question=qa[0], answer=qa[1], kind=kind, objects=objects)


def split(name="test", n=500, size=IMAGE_SIZE):
    """A fixed list of n first-turn examples with the kinds in turn; "test" is the held-out split."""
    base = SEED_BASE[name]
    return [sample(base + i, KINDS[i % len(KINDS)], size) for i in range(n)]


def trained_texts():
    """Every trained question and every answer the dataset can produce (what the tokenizer is trained on;
    the withheld wordings are not among them)."""
    fills = [dict(shape=s, color=c, what=w, obj=article(o)) for s in SHAPES for c in COLORS
             for w in (f"{c} shapes", s + "s") for o in (f"{c} {s}", s, f"{c} shape")]
    texts = [t.format(**f) for templates in TRAINED.values() for t in templates for f in fills]
    texts += [f"{lead} {uncapitalize(t)}" for lead in LEAD_INS for t in texts[:: max(1, len(texts) // 200)]]
    texts += [casual(t) for t in texts]
    texts += list(COLORS) + SHAPES + NUMBERS + [p for row in POSITIONS for p in row] + ["Yes.", "No.", NO_IMAGE]
    texts += [f"There is no {x}." for x in SHAPES + [f"{c} {s}" for c in COLORS for s in SHAPES + ["shape"]]]
    texts += [describe([dict(color=c, shape=s, position=p)]) for c in COLORS for s in SHAPES for p in PHRASES]
    return sorted(set(texts))


if __name__ == "__main__":  # python -m minillava.demo.shapes: write a few examples to shapes_*.png and print them
    for i, ex in enumerate(split("test", 10)):
        ex["image"].resize((288, 288), Image.NEAREST).save(f"shapes_{i}.png")
        print(f"shapes_{i}.png  [{ex['kind']}] {ex['question']} -> {ex['answer']}")
