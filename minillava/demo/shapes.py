"""A procedurally drawn image-question-answer dataset: coloured shapes on a 3 x 3 grid.

Every image holds 1 to 4 shapes (circle, square, triangle) in six colours, of varied size, each in its own
cell of an invisible 3 x 3 grid (with jitter), on a low-saturation background (flat, gradient or noisy).
No two shapes share both shape and colour. Five kinds of question, each with one exact answer:

    colour       "What color is the circle?"            -> "red"       (the only circle in the image)
    shape        "What shape is the blue object?"       -> "square"    (the only blue shape)
    count        "How many shapes are there?"           -> "three"
    position     "Where is the green triangle?"         -> "bottom left"
    description  "Describe the image."                  -> "A red circle at the top left and a blue square in the center."

Everything is a pure function of a seed: `sample(seed)` draws one example, `split(name, n)` a fixed list.
The held-out split ("test", 500 questions, 100 per kind) uses seeds that training never touches.
"""
import colorsys
import random

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle"]
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40), "purple": (140, 60, 190), "orange": (245, 140, 30)}
POSITIONS = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]]
# how a position reads inside a sentence ("... at the top left", "... in the center")
PHRASES = {"top left": "at the top left", "top": "at the top", "top right": "at the top right",
           "left": "on the left", "center": "in the center", "right": "on the right",
           "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right"}
NUMBERS = ["zero", "one", "two", "three", "four"]
KINDS = ["colour", "shape", "count", "position", "description"]
QUESTIONS = {
    "colour": ["What color is the {shape}?", "What colour is the {shape}?", "Which color is the {shape}?"],
    "shape": ["What shape is the {color} object?", "Which shape is {color}?", "What is the {color} shape?"],
    "count": ["How many shapes are there?", "How many shapes are in the image?", "How many objects can you see?"],
    "position": ["Where is the {color} {shape}?", "Where is the {color} {shape} in the image?"],
    "description": ["Describe the image.", "Describe the image in one sentence.", "What is in the image?"],
}
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


def ask(rng, objects, kind):
    """A (question, answer) pair of the given kind about these objects."""
    template = rng.choice(QUESTIONS[kind])
    if kind == "colour":  # ask about a shape type that occurs exactly once
        unique = [o for o in objects if sum(p["shape"] == o["shape"] for p in objects) == 1]
        o = rng.choice(unique)
        return template.format(shape=o["shape"]), o["color"]
    if kind == "shape":  # ask about a colour that occurs exactly once
        unique = [o for o in objects if sum(p["color"] == o["color"] for p in objects) == 1]
        o = rng.choice(unique)
        return template.format(color=o["color"]), o["shape"]
    if kind == "count":
        return template, NUMBERS[len(objects)]
    if kind == "position":
        o = rng.choice(objects)
        return template.format(color=o["color"], shape=o["shape"]), o["position"]
    return template, describe(objects)


def possible_kinds(objects):
    ok = ["count", "position", "description"]
    if any(sum(p["shape"] == o["shape"] for p in objects) == 1 for o in objects):
        ok.append("colour")
    if any(sum(p["color"] == o["color"] for p in objects) == 1 for o in objects):
        ok.append("shape")
    return ok


def sample(seed, kind=None, size=IMAGE_SIZE, confusable=False):
    """One example: dict(image, question, answer, kind, objects), a pure function of `seed`.
    With kind=None the kind is drawn uniformly; scenes that cannot answer it are redrawn."""
    rng = random.Random(seed)
    kind = kind or rng.choice(KINDS)
    while True:
        img, objects = draw_scene(rng, size, confusable)
        if kind in possible_kinds(objects):
            q, a = ask(rng, objects, kind)
            return dict(image=img, question=q, answer=a, kind=kind, objects=objects)


def split(name="test", n=500, size=IMAGE_SIZE):
    """A fixed list of n examples with the kinds in turn (n/5 of each); "test" is the held-out split."""
    base = SEED_BASE[name]
    return [sample(base + i, KINDS[i % len(KINDS)], size) for i in range(n)]


def all_texts():
    """Every question and answer string the dataset can produce (used to train the tokenizer)."""
    texts = []
    for kind, templates in QUESTIONS.items():
        for t in templates:
            for shape in SHAPES:
                for color in COLORS:
                    texts.append(t.format(shape=shape, color=color))
    texts += list(COLORS) + SHAPES + NUMBERS + [p for row in POSITIONS for p in row]
    texts += [describe([dict(color=c, shape=s, position=p)]) for c in COLORS for s in SHAPES for p in PHRASES]
    return sorted(set(texts))


if __name__ == "__main__":  # python -m minillava.demo.shapes: write a few examples to shapes_*.png and print them
    for i, ex in enumerate(split("test", 10)):
        ex["image"].resize((288, 288), Image.NEAREST).save(f"shapes_{i}.png")
        print(f"shapes_{i}.png  [{ex['kind']}] {ex['question']} -> {ex['answer']}")
