"""Write the notebooks of this folder from the cells below, and execute them (outputs are committed).

    python notebooks/build.py              # write all seven and run them on the embedded demo checkpoint
    python notebooks/build.py 04 06        # only these
    python notebooks/build.py --no-execute # write them without outputs

Each notebook picks its checkpoint from $MINILLAVA_CHECKPOINT (any llava-hf folder), else the demo in
minillava/demo. The committed outputs come from the demo: unset the variable before building them.
Nothing below is tied to one model's sizes; they are read from model.config and the processor.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def md(text):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text):
    return nbformat.v4.new_code_cell(text.strip("\n"))


SETUP = '''
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import minillava
from minillava.demo import shapes

plt.rcParams.update({"figure.dpi": 70, "font.size": 9})

# Any llava-hf folder through $MINILLAVA_CHECKPOINT; by default the tiny demo that ships in the package.
CHECKPOINT = os.environ.get("MINILLAVA_CHECKPOINT") or None
FOLDER = CHECKPOINT or minillava.DEMO
model, processor = minillava.load(CHECKPOINT)
print("checkpoint:", CHECKPOINT or "minillava/demo (the embedded demo)")
'''

TO_IMAGE = '''
def to_image(pixel_values):
    """(3, H, W) normalized pixel_values -> (H, W, 3) in [0, 1]: the normalization undone, for display."""
    mean = torch.tensor(processor.image_config["image_mean"])[:, None, None]
    std = torch.tensor(processor.image_config["image_std"])[:, None, None]
    return (pixel_values * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
'''

# A held-out example of the dataset the demo was trained on (minillava/demo/shapes.py): seeds from
# shapes.SEED_BASE["test"] on are never used for training.
EXAMPLE = '''
example = shapes.sample(shapes.SEED_BASE["test"] + {seed}, kind="{kind}")
photo = example["image"]
print(f"{{example['question']!r}} -> {{example['answer']!r}}  ({{photo.width}} x {{photo.height}} px)")
'''


def example(seed=0, kind="description"):
    return EXAMPLE.format(seed=seed, kind=kind)


# ---------------------------------------------------------------------------------------------------------

def nb01():
    return [
        md('''
# 01 · Pixels: how a photo becomes `pixel_values`

The vision tower reads one thing: a square of `vision_config.image_size` pixels per side, three channels of
normalized floats. This notebook follows one photo through `minillava/images.py`, the image half of the
processor:

1. convert to an RGB `uint8` array,
2. (optionally) pad it to a square with the mean colour, as the original LLaVA-1.5 did,
3. resize so the shortest edge has the target length (bicubic),
4. crop the centre square,
5. rescale to [0, 1] and normalize each channel with CLIP's mean and standard deviation.

Each step is done here by hand with the helpers of `minillava.images`, then checked against
`processor.preprocess`.
'''),
        code(SETUP + TO_IMAGE),
        md('''
## The photo

The demo checkpoint was trained on coloured shapes drawn by `minillava.demo.shapes`. Its scenes are square; to see
what the crop does to a photo that is not, we put two scenes side by side: a photo twice as wide as it is tall.
'''),
        code('''
from PIL import Image

left, right = shapes.sample(3, size=160)["image"], shapes.sample(4, size=160)["image"]
photo = Image.new("RGB", (left.width + right.width, left.height))
photo.paste(left, (0, 0))
photo.paste(right, (left.width, 0))
plt.figure(figsize=(4, 2))
plt.imshow(photo)
plt.title(f"the photo, {photo.width} x {photo.height} px")
plt.axis("off");
'''),
        md('''
## The settings

They come from the checkpoint's `preprocessor_config.json` (keys left out take `CLIPImageProcessor`'s
defaults). The crop size is the vision tower's input size.
'''),
        code('''
c = processor.image_config
for key in ("do_pad", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
            "rescale_factor", "do_normalize", "image_mean", "image_std"):
    print(f"{key:15s} {c[key]}")
print("vision tower input:", model.config.vision_config.image_size, "x", model.config.vision_config.image_size)
'''),
        md('''
## Step 1: an RGB array

`load_image` accepts a PIL image, a numpy array or a path and returns `(H, W, 3)` `uint8`. Transparent
pixels of a PIL image are composited onto white, as transformers 5 does.
'''),
        code('''
from minillava.images import center_crop, load_image, pad_to_square, resize_size

x = load_image(photo)
print(x.shape, x.dtype)
'''),
        md('''
## Step 2: pad to a square (LLaVA-1.5's `expand2square`)

The original LLaVA-1.5 pasted every image onto a square of the mean colour before the CLIP preprocessing
(`image_aspect_ratio: "pad"`), so nothing is cropped away. llava-hf's checkpoints name a plain
`CLIPImageProcessor`, which does not (`do_pad` false); `minillava convert-original` writes `do_pad: true`.
Which one this checkpoint uses is `c["do_pad"]` above.
'''),
        code('''
background = tuple(int(m * 255) for m in c["image_mean"])  # (122, 116, 104) for CLIP's mean
squared = pad_to_square(x, background)
print("background colour", background, "| padded:", squared.shape)
start = squared if c["do_pad"] else x  # what this checkpoint's processor resizes
'''),
        md('''
## Step 3: resize the shortest edge

The short side becomes `size["shortest_edge"]`, the long side keeps the aspect ratio (rounded down). PIL's
bicubic filter with antialiasing, exactly as transformers' PIL backend calls it.
'''),
        code('''
if c["do_resize"]:
    h, w = resize_size(*start.shape[:2], c["size"])
    resized = np.array(Image.fromarray(start).resize((w, h), resample=c["resample"], reducing_gap=None))
else:
    resized = start
print(start.shape[:2], "->", resized.shape[:2])
'''),
        md('''
## Step 4: crop the centre

A square of `crop_size` from the middle. On a wide photo without padding this cuts off the sides: whatever
was there never reaches the model.
'''),
        code('''
chw = resized.transpose(2, 0, 1)  # (3, H, W): the processor works channels first
cropped = (center_crop(chw, c["crop_size"], pad_rounds_up=True) if c["do_center_crop"] else chw).transpose(1, 2, 0)
print(resized.shape[:2], "->", cropped.shape[:2])
'''),
        md('''
## Step 5: rescale and normalize

`uint8 / 255` gives [0, 1]; subtracting CLIP's per-channel mean and dividing by its standard deviation
(statistics of CLIP's training images) centres the values around 0. The result is `float32`, channels first.
'''),
        code('''
scaled = (cropped.astype(np.float64) * c["rescale_factor"]).astype(np.float32)  # float64 product, as transformers
mean, std = (np.array(c[k], dtype=np.float32) for k in ("image_mean", "image_std"))
normalized = (scaled - mean) / std
by_hand = torch.from_numpy(normalized.transpose(2, 0, 1).copy())  # (3, H, W)

pixel_values = processor.preprocess([photo])  # (n_images, 3, H, W)
print("pixel_values", tuple(pixel_values.shape), pixel_values.dtype)
print("max |by hand - processor| =", (by_hand - pixel_values[0]).abs().max().item())
print("per channel mean", pixel_values[0].mean((1, 2)).numpy().round(3), "std", pixel_values[0].std((1, 2)).numpy().round(3))
'''),
        md('''
## The steps as pictures

The last three panels are the three channels of `pixel_values`, the numbers the vision tower receives.
'''),
        code('''
steps = [("photo", x), ("padded" if c["do_pad"] else "(no padding)", start), ("resized", resized), ("cropped", cropped)]
fig, axes = plt.subplots(1, 7, figsize=(12, 2.2))
for ax, (title, img) in zip(axes, steps):
    ax.imshow(img)
    ax.set_title(f"{title}\\n{img.shape[1]} x {img.shape[0]}")
for ax, ch, name in zip(axes[4:], pixel_values[0], "RGB"):
    im = ax.imshow(ch, cmap="coolwarm", vmin=-2, vmax=2)
    ax.set_title(f"{name}, normalized\\n[{ch.min():.2f}, {ch.max():.2f}]")
for ax in axes:
    ax.axis("off")
fig.colorbar(im, ax=list(axes[4:]), fraction=0.02);
'''),
        md('''
## Crop or pad?

The same photo through both variants of this checkpoint's processor. With the crop, the outer shapes are
lost; with the padding everything stays, smaller, between bands of the mean colour, which normalize to about
0: the padding carries almost no signal.
'''),
        code('''
variants = {"do_pad=False: centre crop": minillava.Processor.from_pretrained(FOLDER, do_pad=False),
            "do_pad=True: pad, then crop": minillava.Processor.from_pretrained(FOLDER, do_pad=True)}
fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
for ax, (name, p) in zip(axes, variants.items()):
    pv = p.preprocess([photo])[0]
    ax.imshow(to_image(pv))
    ax.set_title(name)
    ax.axis("off")
    print(f"{name:28s} corner pixel after normalization: {pv[:, 0, 0].numpy().round(3)}")
'''),
        md('''
## Two resize backends

`backend="pil"` (the default) is bit-identical to transformers' PIL image processor; `backend="torch"` is
bit-identical to its torchvision processor. The two bicubic filters round differently, by one or two `uint8`
levels on a small fraction of pixels, so they are not interchangeable when you want transformers' exact logits.
'''),
        code('''
pil, tch = processor.preprocess([photo], backend="pil"), processor.preprocess([photo], backend="torch")
levels = ((pil - tch) * torch.tensor(c["image_std"])[:, None, None] * 255).abs().round()  # in uint8 steps
print(f"pixels that differ: {(levels > 0).float().mean().item():.2%}, by at most {int(levels.max())} levels")
'''),
    ]


def nb02():
    return [
        md('''
# 02 · The vision tower: patches to features

LLaVA's eyes are a CLIP vision transformer (`minillava/clip.py`; ViT-L/14 at 336 px in LLaVA-1.5). It cuts
the image into square patches, turns each into a vector, adds a learned position, prepends a class token and
runs a stack of pre-norm transformer layers. LLaVA does not use CLIP's final output: it takes the patch
tokens of an *inner* layer.
'''),
        code(SETUP + TO_IMAGE + example(0)),
        code('''
vc = model.config.vision_config
S, P = vc.image_size, vc.patch_size
grid = S // P
print(f"image {S} x {S}, patch {P} x {P} -> {grid} x {grid} = {vc.num_patches} patches; "
      f"width {vc.hidden_size}, {vc.num_hidden_layers} layers, {vc.num_attention_heads} heads")
pixel_values = processor.preprocess([photo])  # (1, 3, S, S), see 01_pixels
'''),
        md('''
## Patches

The image is read as a grid of non-overlapping patches, row by row. Each patch becomes one token.
'''),
        code('''
fig, axes = plt.subplots(1, 2, figsize=(7, 3), gridspec_kw={"width_ratios": [1, 1.6]})
axes[0].imshow(to_image(pixel_values[0]))
for i in range(1, grid):
    axes[0].axhline(i * P - 0.5, color="w", lw=0.6)
    axes[0].axvline(i * P - 0.5, color="w", lw=0.6)
axes[0].set_title(f"{grid} x {grid} patches")
# the patches of the top row, in reading order: one token each
patches = pixel_values.unfold(2, P, P).unfold(3, P, P)  # (1, 3, grid, grid, P, P)
gap = np.ones((P, max(1, P // 4), 3))
strip = np.concatenate([part for j in range(min(grid, 8)) for part in (to_image(patches[0, :, 0, j]), gap)], axis=1)
axes[1].imshow(strip)
axes[1].set_title(f"the top row: tokens 1 to {min(grid, 8)}")
for ax in axes:
    ax.axis("off")
'''),
        md('''
## Patch embedding: a convolution that is a matrix product

`patch_embedding` is a `Conv2d` with kernel size = stride = patch size, so it is one linear map applied to each
flattened patch. The two computations agree.
'''),
        code('''
emb = model.vision_tower.vision_model.embeddings
flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, grid * grid, 3 * P * P)  # (1, n_patches, 3 P P)
tokens = flat @ emb.patch_embedding.weight.reshape(vc.hidden_size, -1).T  # (1, n_patches, hidden)
with torch.no_grad():
    conv = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
print("tokens", tuple(tokens.shape), "| max |matmul - conv| =", (tokens - conv).abs().max().item())

w = emb.patch_embedding.weight[:8]  # the first 8 filters, each a small RGB image
fig, axes = plt.subplots(1, 8, figsize=(8, 1.3))
for ax, f in zip(axes, w):
    ax.imshow(((f - f.min()) / (f.max() - f.min())).permute(1, 2, 0).numpy())
    ax.axis("off")
fig.suptitle("patch-embedding filters 0-7");
'''),
        md('''
## Class token and position embeddings

A learned class token goes in front (position 0), and every token gets a learned position vector added. The
patches carry no notion of where they are otherwise. Below: how similar the position embedding of a few
patches is to that of every other patch (cosine similarity), drawn on the patch grid. A trained tower
usually shows the 2-D layout it has learned: neighbours look alike.
'''),
        code('''
pos = torch.nn.functional.normalize(emb.position_embedding.weight[1:], dim=-1)  # (n_patches, hidden), CLS left out
sim = (pos @ pos.T).reshape(-1, grid, grid)
picks = [0, grid - 1, (grid // 2) * grid + grid // 2, grid * grid - grid, grid * grid - 1]
fig, axes = plt.subplots(1, len(picks), figsize=(9, 2))
for ax, i in zip(axes, picks):
    ax.imshow(sim[i], cmap="viridis", vmin=-1, vmax=1)
    ax.plot(i % grid, i // grid, "r+", ms=8)
    ax.set_title(f"patch ({i // grid}, {i % grid})")
    ax.axis("off")
'''),
        md('''
## Every layer's hidden states

`model.vision_tower(pixel_values, layers)` returns the hidden states at the indices asked for. The indices are
those of transformers' `hidden_states` tuple: index 0 is the embeddings after `pre_layrnorm`, index *i* the
output of encoder layer *i* (counting from 1). A tower of *L* layers has *L* + 1 entries, each of shape
`(n_images, 1 + n_patches, hidden)`.
'''),
        code('''
L = vc.num_hidden_layers
with torch.no_grad():
    hidden = model.vision_tower(pixel_values, list(range(L + 1)))
print(len(hidden), "hidden states of shape", tuple(hidden[0].shape))
'''),
        md('''
## Which layer LLaVA takes, and why

`vision_feature_layer` is `-2`: the second-to-last entry of `hidden_states`, i.e. index *L* − 1, the output of
the **penultimate** encoder layer. For CLIP ViT-L/14 (24 layers, 25 entries) that is index 23. In CLIP only
the last layer's class token reaches the contrastive image-text loss (through `post_layernorm` and a
projection): the last layer's outputs at the patch positions feed nothing, so nothing trains them to be
useful, while the penultimate layer's patch tokens all feed that final class token. The LLaVA paper found the
penultimate features slightly better, and suggests they keep more localized detail than the last layer's
global, abstract ones. minillava loads the last layer and `post_layernorm` (they are in every checkpoint) but
never runs them.

With the `"default"` strategy the class token is dropped: the image becomes `n_patches` feature vectors.
'''),
        code('''
cfg = model.config
print(f"vision_feature_layer = {cfg.vision_feature_layer!r} -> hidden_states index {cfg.feature_layers} "
      f"of 0..{L}; strategy {cfg.vision_feature_select_strategy!r}")
with torch.no_grad():
    features = model.vision_features(pixel_values)  # what the projector receives
skip = 1 if cfg.vision_feature_select_strategy == "default" else 0
by_hand = torch.cat([hidden[i][:, skip:] for i in cfg.feature_layers], dim=-1)
print("features", tuple(features.shape), "| max |features - hidden_states[layer][:, 1:]| =",
      (features - by_hand).abs().max().item())
'''),
        md('''
## Feature maps

Left: the three main directions of the selected layer's patch features (a PCA), shown as red, green and blue
on the patch grid: patches with similar features get similar colours. Right: the length of every patch token
through the layers.
'''),
        code('''
def pca_image(feats):
    """(grid*grid, D) -> (grid, grid, 3): the top 3 principal components, scaled to [0, 1]."""
    centred = feats - feats.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    rgb = centred @ v[:3].T
    rgb = (rgb - rgb.min(0).values) / (rgb.max(0).values - rgb.min(0).values + 1e-8)
    return rgb.reshape(grid, grid, 3).numpy()

selected = hidden[cfg.feature_layers[0]][0, 1:]  # patch tokens of the selected layer
fig, axes = plt.subplots(1, 2, figsize=(5, 2.5))
axes[0].imshow(to_image(pixel_values[0]))
axes[0].set_title("input")
axes[1].imshow(pca_image(selected))
axes[1].set_title(f"PCA of layer index {cfg.feature_layers[0]}")
for ax in axes:
    ax.axis("off")

cols = min(L + 1, 9)
rows = -(-(L + 1) // cols)
fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25), squeeze=False)
for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i <= L:
        ax.imshow(hidden[i][0, 1:].norm(dim=-1).reshape(grid, grid), cmap="magma")
        ax.set_title(f"{i}" + (" *" if i in cfg.feature_layers else ""), fontsize=8)
fig.suptitle("patch token norm per hidden_states index (* = used by LLaVA)", fontsize=9, y=1.02 + 0.1 / rows);
'''),
        md('''
How alike the patch tokens are, layer by layer (mean cosine similarity between all pairs of patches). The
higher it is, the more the tokens describe the whole image rather than their own patch.
'''),
        code('''
def mean_similarity(h):
    t = torch.nn.functional.normalize(h[0, 1:], dim=-1)
    s = t @ t.T
    n = s.shape[0]
    return ((s.sum() - n) / (n * (n - 1))).item()

similarity = [mean_similarity(h) for h in hidden]
plt.figure(figsize=(4.5, 2.2))
plt.plot(range(L + 1), similarity, "o-")
for i in cfg.feature_layers:
    plt.axvline(i, color="r", ls="--", lw=1)
plt.xlabel("hidden_states index (red: used by LLaVA)")
plt.ylabel("mean cosine similarity")
plt.xticks(range(L + 1));
'''),
    ]


def nb03():
    return [
        md('''
# 03 · The projector: from CLIP's space to the decoder's

The vision features live in CLIP's space (`vision_config.hidden_size` wide); the decoder reads token
embeddings (`text_config.hidden_size` wide). LLaVA-1.5 connects them with a two-layer MLP, `linear_1 -> GELU ->
linear_2` (`minillava/projector.py`), applied to each image token on its own. In LLaVA's first training stage
it is the only part that learns (tower and decoder frozen); afterwards an image token is, to the decoder, just
one more "word".
'''),
        code(SETUP + example(0)),
        code('''
import torch.nn.functional as F

proj = model.multi_modal_projector
print(proj)
print(f"{sum(p.numel() for p in proj.parameters()):,} parameters")
pixel_values = processor.preprocess([photo])
with torch.no_grad():
    features = model.vision_features(pixel_values)  # (1, n_tokens, vision width x n_layers)
    h = proj.linear_1(features)
    out = proj.linear_2(F.gelu(h))  # (1, n_tokens, text width)
    image_features = model.image_features(pixel_values)
print("features", tuple(features.shape), "->", tuple(out.shape))
print("max |by hand - model.image_features| =", (out - image_features).abs().max().item())
'''),
        md('''
## Which GELU

The projector uses the exact GELU, `x * Phi(x)` with the normal CDF (transformers' `ACT2FN["gelu"]`), not the
tanh approximation, and not the tower's `quick_gelu` (`x * sigmoid(1.702 x)`, what OpenAI's CLIP was trained
with). The curves are close; the differences are small but would show up in an exact comparison of logits.
'''),
        code('''
from minillava.clip import quick_gelu

t = torch.linspace(-4, 3, 200)
plt.figure(figsize=(4.5, 2.5))
plt.plot(t, F.gelu(t), label="gelu (erf): projector")
plt.plot(t, quick_gelu(t), "--", label="quick_gelu: CLIP tower")
plt.plot(t, F.gelu(t, approximate="tanh"), ":", label="gelu (tanh approx.)")
plt.legend()
print("on this image's pre-activations, max |erf - tanh| =", (F.gelu(h) - F.gelu(h, approximate="tanh")).abs().max().item())
'''),
        md('''
## Image tokens next to word embeddings

After the projector, image tokens sit in the same space as the rows of `embed_tokens`. Their lengths need
not match those of word embeddings: the decoder's first RMSNorm rescales every token anyway.
'''),
        code('''
E = model.language_model.model.embed_tokens.weight  # (vocab, text width)
n_words = processor.tokenizer.get_vocab_size()  # rows the tokenizer can produce (the rest is padding)
plt.figure(figsize=(4.5, 2.3))
plt.hist(E[:n_words].norm(dim=-1).numpy(), bins=50, density=True, alpha=0.6, label="word embeddings")
plt.hist(out[0].norm(dim=-1).numpy(), bins=30, density=True, alpha=0.6, label="image tokens")
plt.xlabel("vector length")
plt.legend();
'''),
        md('''
## The nearest word to each image token

For every image token, the vocabulary entry whose embedding points in the most similar direction (cosine
similarity), laid out on the patch grid. Nothing forces image tokens to resemble words, so this is a probe,
not a caption; in a trained model some patches do land near the words for what they show.
'''),
        code('''
sim = F.normalize(out[0], dim=-1) @ F.normalize(E[:n_words], dim=-1).T  # (n_tokens, n_words)
for special in (processor.image_token_id, processor.pad_token_id):
    if special is not None and special < n_words:
        sim[:, special] = -2
nearest = [processor.tokenizer.id_to_token(i) for i in sim.argmax(-1).tolist()]
grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
nearest = nearest[len(nearest) - grid * grid:]  # a "full" strategy keeps the class token first: skip it
for r in range(min(grid, 16)):
    print(" ".join(f"{w[:7]:>7s}" for w in nearest[r * grid:(r + 1) * grid][:16]))
counts = {}
for w in nearest:
    counts[w] = counts.get(w, 0) + 1
print("\\nmost frequent:", sorted(counts.items(), key=lambda kv: -kv[1])[:8])
'''),
    ]


def nb04():
    return [
        md('''
# 04 · The decoder: RMSNorm, RoPE, grouped-query attention, the KV cache

The language model is a Llama decoder (Vicuna in LLaVA-1.5, Mistral in bakLlava; `minillava/llama.py`). Each
layer is `x + attention(RMSNorm(x))`, then `x + MLP(RMSNorm(x))`, with SwiGLU as the MLP. This notebook takes
its parts one at a time, using the model's own modules, and ends with what the KV cache saves.
'''),
        code(SETUP + example(0)),
        code('''
from minillava.llama import apply_rotary, rotary_cos_sin

tc = model.config.text_config
lm = model.language_model
for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "rms_norm_eps", "rope_theta", "vocab_size"):
    print(f"{key:20s} {getattr(tc, key)}")

prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                          {"type": "text", "text": example["question"]}]}], add_generation_prompt=True)
inputs = processor(text=prompt, images=photo)
with torch.no_grad():
    x = model.embed(inputs["input_ids"], inputs["pixel_values"])  # (1, T, hidden): see 05_prompt_and_merge
T = x.shape[1]
print("prompt:", T, "tokens")
'''),
        md('''
## RMSNorm

Unlike LayerNorm, RMSNorm does not subtract the mean: it divides by the root mean square and multiplies by a
learned gain. It is computed in float32 and cast back before the gain, as transformers does (it matters in
float16, where the mean of squares can overflow).
'''),
        code('''
norm = lm.model.layers[0].input_layernorm
xf = x.float()
by_hand = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).to(x.dtype)
with torch.no_grad():
    y = norm(x)
print("max |by hand - module| =", (by_hand - y).abs().max().item())
rms = lambda t: t.pow(2).mean(-1).sqrt()
print(f"before: mean {x.mean(-1).abs().mean():.3f}, rms {rms(x).mean():.3f} | "
      f"after dividing by the rms: rms {rms(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).mean():.3f}")
'''),
        md('''
## RoPE: positions as rotations

Rotary embeddings rotate pairs of query and key coordinates by an angle `position x frequency`, with
frequencies `theta^(-2i/head_dim)` from fast to very slow. Llama pairs coordinate *i* with *i* + head_dim/2
(the "half-split" layout). Left: the cosine of the angle for each position and coordinate.
Because both q and k are rotated, their dot product depends only on the distance between the two
positions: the same q and k give the same score at positions (5, 2) and (105, 102). Right: for q = k = (1, ..., 1)
the score falls off, with ripples, as the distance grows (RoPE's "long-term decay").
'''),
        code('''
context = tc.max_position_embeddings
positions = torch.arange(min(128, context))[None]
cos, sin = rotary_cos_sin(positions, tc.head_dim, tc.rope_theta, torch.float32)  # (1, positions, head_dim)

g = torch.Generator().manual_seed(0)
q = torch.randn(1, 1, 1, tc.head_dim, generator=g)
k = torch.randn(1, 1, 1, tc.head_dim, generator=g)

def score(m, n, q=q, k=k):
    cm, sm = rotary_cos_sin(torch.tensor([[m]]), tc.head_dim, tc.rope_theta, torch.float32)
    cn, sn = rotary_cos_sin(torch.tensor([[n]]), tc.head_dim, tc.rope_theta, torch.float32)
    return (apply_rotary(q, cm, sm) * apply_rotary(k, cn, sn)).sum().item()

print(f"q.k at positions (5, 2): {score(5, 2):.5f}   at (105, 102): {score(105, 102):.5f}")
ones = torch.ones(1, 1, 1, tc.head_dim)
distance = torch.cat([torch.arange(0, 64), torch.logspace(6, np.log2(context), 60, base=2).long()])
distance = distance[distance < context].unique()  # within the model's context
fig, axes = plt.subplots(1, 2, figsize=(9, 2.6))
im = axes[0].imshow(cos[0].T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set_xlabel("position")
axes[0].set_ylabel("coordinate")
axes[0].set_title(f"cos(position x frequency), theta = {tc.rope_theta:g}")
axes[1].plot(distance, [score(int(d), 0, ones, ones) for d in distance])
axes[1].set_xscale("symlog", linthresh=16)
axes[1].set_xlabel(f"distance between query and key (up to the context, {context})")
axes[1].set_title("q.k for q = k = (1, ..., 1)")
fig.colorbar(im, ax=axes[0]);
'''),
        md('''
## Grouped-query attention, by hand

With `num_key_value_heads` < `num_attention_heads`, consecutive groups of query heads share one key/value head
(Ainslie et al. 2023): the model computes and caches fewer keys and values. Here layer 0's attention is
recomputed step by step (project, rotate, repeat the shared heads, causal softmax, output projection) and
compared with the module.
'''),
        code('''
layer = lm.model.layers[0]
attn = layer.self_attn
H, KV, hd = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
group = H // KV
print("query head -> key/value head:", {h: h // group for h in range(H)})

with torch.no_grad():
    cos, sin = rotary_cos_sin(torch.arange(T)[None], hd, tc.rope_theta, x.dtype)
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(1, T, H, hd).transpose(1, 2)  # (1, H, T, hd)
    k = attn.k_proj(h).view(1, T, KV, hd).transpose(1, 2)  # (1, KV, T, hd): fewer heads
    v = attn.v_proj(h).view(1, T, KV, hd).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k_all, v_all = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # one copy per query head
    scores = q @ k_all.transpose(-1, -2) / hd ** 0.5  # (1, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))  # no peeking ahead
    weights = scores.softmax(-1)
    out = attn.o_proj((weights @ v_all).transpose(1, 2).reshape(1, T, H * hd))
    module = attn(h, cos, sin, None, None)
print("max |by hand - module| =", (out - module).abs().max().item())

fig, axes = plt.subplots(1, min(H, 4), figsize=(8, 2.2), squeeze=False)
for i, ax in enumerate(axes[0]):
    ax.imshow(weights[0, i] ** 0.5, cmap="Blues")  # square root, to see the small weights too
    ax.set_title(f"layer 0, head {i} (kv {i // group})", fontsize=8)
    ax.set_xlabel("key position")
axes[0][0].set_ylabel("query position");
'''),
        md('''
## The KV cache: what it costs

Generating token *t* needs the keys and values of all tokens before it. The cache keeps them, per layer, so
each new token is computed once. It stores only the `num_key_value_heads` shared heads, so its size per token is
`2 (k and v) x layers x kv_heads x head_dim x bytes per number`. `model.new_cache` allocates it once, for
the whole run.
'''),
        code('''
def cache_bytes_per_token(layers, kv_heads, head_dim, bytes_per_value):
    return 2 * layers * kv_heads * head_dim * bytes_per_value

positions = min(1024, tc.max_position_embeddings)
cache = model.new_cache(1, positions)
allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
print(f"this checkpoint: cache for {positions} positions = {allocated / 2**20:.2f} MiB "
      f"({allocated // positions} bytes per token in {model.dtype}; formula: "
      f"{cache_bytes_per_token(tc.num_hidden_layers, tc.num_key_value_heads, tc.head_dim, model.dtype.itemsize)})")
# (layers, kv heads, head_dim) from the published configs: see weights.md
for name, (layers, kv, d) in {"llava-1.5-7b": (32, 32, 128), "llava-1.5-13b": (40, 40, 128),
                              "bakLlava-v1 (Mistral, GQA)": (32, 8, 128)}.items():
    per_token = cache_bytes_per_token(layers, kv, d, 2)
    print(f"{name:28s} fp16: {per_token / 2**10:5.0f} KiB per token, {per_token * 4096 / 2**30:.2f} GiB for 4096 tokens")
'''),
        md('''
## The KV cache: what it saves

Two ways to generate the same greedy answer, timed step by step: with the cache (`minillava.generation.prefill`
once, then `decode_step` with one token at a time) and without it (the whole sequence through the decoder at
every step; the image features are computed once for both). Without a cache, step *i* processes `T + i`
tokens; with it, one.
'''),
        code('''
import time

from minillava.generation import decode_step, prefill

N = 24
ids, pv = inputs["input_ids"], inputs["pixel_values"]

cache = model.new_cache(1, T + N)
mask = torch.ones(1, T, dtype=torch.long)
cached_times, cached_tokens = [], []
start = time.perf_counter()
logits = prefill(model, ids, pv, mask, cache)
cached_times.append(time.perf_counter() - start)
for _ in range(N - 1):
    token = logits.argmax(-1)
    cached_tokens.append(token.item())
    mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
    start = time.perf_counter()
    logits = decode_step(model, token, mask, cache)
    cached_times.append(time.perf_counter() - start)
cached_tokens.append(logits.argmax(-1).item())

with torch.no_grad():
    image_features = model.image_features(pv)
    plain_times, plain_tokens, seq = [], [], ids
    for _ in range(N):
        start = time.perf_counter()
        logits = model(seq, inputs_embeds=model.embed(seq, image_features=image_features), logits_to_keep=1)
        plain_times.append(time.perf_counter() - start)
        token = logits[:, -1].argmax(-1)
        plain_tokens.append(token.item())
        seq = torch.cat([seq, token[:, None]], dim=1)

print("same tokens:", cached_tokens == plain_tokens)
print(f"with the cache: {sum(cached_times) * 1000:.0f} ms (prefill {cached_times[0] * 1000:.1f} ms, then "
      f"{np.median(cached_times[1:]) * 1000:.2f} ms per token)")
print(f"without:        {sum(plain_times) * 1000:.0f} ms ({np.median(plain_times[1:]) * 1000:.2f} ms per token)")
print(f"token positions run through the decoder: {T + N - 1} with the cache, {sum(T + i for i in range(N))} without")
plt.figure(figsize=(4.5, 2.4))
plt.plot(np.array(plain_times) * 1000, label="no cache: whole sequence each step")
plt.plot(np.array(cached_times) * 1000, label="KV cache: one token per step")
plt.xlabel("step (0 = the prompt)")
plt.ylabel("ms")
plt.yscale("log")
plt.legend();
'''),
    ]


def nb05():
    return [
        md('''
# 05 · The prompt, and merging the image into it

The decoder reads one sequence of vectors. This notebook builds it: the chat template turns a conversation into
a prompt string with an `<image>` marker, the processor expands that marker into one `<image>` token per image
feature and tokenizes, and `model.embed` looks up the token embeddings and writes the image features into the
`<image>` positions (`minillava/chat.py`, `processor.py`, `llava.py`).
'''),
        code(SETUP + example(1, "colour")),
        md('''
## The chat template

llava-hf's template, written out in plain Python (`minillava.chat.format_conversation`): `"USER: "`, one
`"<image>\\n"` per image, the text followed by a space, and `"ASSISTANT:"` to ask for an answer.
'''),
        code('''
conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
print(repr(prompt))
'''),
        md('''
## Tokens

One `<image>` marker becomes `(image_size / patch_size)^2` `<image>` tokens (one per patch; plus one with the
`"full"` strategy, which keeps CLIP's class token), as a string, before the tokenizer runs: 576 for the real
LLaVA-1.5. The tokenizer (`tokenizer.json`, used verbatim) adds the BOS token.
'''),
        code('''
inputs = processor(text=prompt, images=photo)
ids = inputs["input_ids"]
vc = model.config.vision_config
n_image = processor.num_image_tokens(*inputs["pixel_values"].shape[-2:])
print(f"{vc.image_size} px / patch {vc.patch_size} -> {n_image} image tokens")
print("input_ids", tuple(ids.shape), "attention_mask", tuple(inputs["attention_mask"].shape),
      "pixel_values", tuple(inputs["pixel_values"].shape))

is_image = ids[0] == model.config.image_token_index
first, last = is_image.nonzero()[[0, -1], 0].tolist()
print(f"\\nimage positions: {first}..{last} ({int(is_image.sum())} tokens)\\n")
for i, t in enumerate(ids[0].tolist()):
    if first < i <= last:
        continue  # one line for the whole image run
    piece = processor.tokenizer.id_to_token(t)
    print(f"{i:4d} {t:6d} {piece!r}" + (f"  x {n_image}, positions {first}..{last}" if i == first else ""))
'''),
        code('''
plt.figure(figsize=(8, 0.8))
plt.imshow(is_image[None].float(), aspect="auto", cmap="coolwarm", vmin=-0.3, vmax=1.3)
plt.yticks([])
plt.xlabel("position in the prompt (red: <image> tokens, blue: text)");
'''),
        md('''
## The merge

`model.embed` looks up every token, then overwrites the `<image>` rows with the projected image features in
order (`masked_scatter`, as transformers does). The row of `embed_tokens` for `<image>` is looked up but never
used.
'''),
        code('''
with torch.no_grad():
    text_embeddings = model.language_model.model.embed_tokens(ids)  # (1, T, D)
    image_features = model.image_features(inputs["pixel_values"])  # (1, n_image, D)
    merged = model.embed(ids, inputs["pixel_values"])  # (1, T, D)
print("text positions equal the word embeddings:  ", torch.equal(merged[0, ~is_image], text_embeddings[0, ~is_image]))
print("image positions equal the image features:  ", torch.equal(merged[0, is_image], image_features[0]))

fig, ax = plt.subplots(figsize=(7, 1.6))
shown = merged[0, :, :32].T  # the first 32 dimensions
ax.imshow(shown, aspect="auto", cmap="RdBu", vmin=-2 * shown.std(), vmax=2 * shown.std(), interpolation="nearest")
ax.axvspan(first - 0.5, last + 0.5, fill=False, ec="k", lw=1.5)
ax.set_xlabel("position (framed: the image features)")
ax.set_ylabel("dimension");
'''),
        md('''
## A batch

Prompts of different lengths are padded on the left (so every prompt ends in the last column, where
generation continues), with `attention_mask` 0 on the padding. Images fill the `<image>` runs in order, row by
row, across the batch. A mismatch between `<image>` tokens and images is refused.
'''),
        code('''
other = shapes.sample(shapes.SEED_BASE["test"] + 2)
prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                         add_generation_prompt=True)
           for q in (example["question"], "Describe the image in one sentence.")]
batch = processor(text=prompts, images=[photo, other["image"]])
print("input_ids", tuple(batch["input_ids"].shape), "| real tokens per row:", batch["attention_mask"].sum(1).tolist())
print("row 1 starts with", batch["attention_mask"][1, :8].tolist(), "...")
with torch.no_grad():
    merged = model.embed(batch["input_ids"], batch["pixel_values"])
    features = model.image_features(batch["pixel_values"])
image_rows = batch["input_ids"] == model.config.image_token_index
print("row 0 holds image 0:", torch.equal(merged[0, image_rows[0]], features[0]),
      "| row 1 holds image 1:", torch.equal(merged[1, image_rows[1]], features[1]))

try:
    model.embed(batch["input_ids"][:1], image_features=features)  # one prompt, two images
except minillava.PromptError as e:
    print("\\nPromptError:", e)
'''),
    ]


def nb06():
    return [
        md('''
# 06 · Generation: greedy, sampling, and where the answer looks

`minillava.generate` runs the prompt once (`prefill`, which fills the KV cache), then feeds back one token at
a time (`decode_step`), choosing each next token with `sample`: the most likely one (greedy) or a random draw
from the softmax, optionally restricted to the `top_k` most likely tokens or to the smallest set holding
`top_p` of the probability. At the end: which image patches the last layer attends to while answering,
computed by hand from the queries and the cached keys.
'''),
        code(SETUP + TO_IMAGE + example(7, "position")),
        code('''
from minillava.generation import generate, prefill, sample, stream

conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
inputs = processor(text=prompt, images=photo)
ids, pixel_values = inputs["input_ids"], inputs["pixel_values"]
T = ids.shape[1]

new = generate(model, ids, pixel_values, max_new_tokens=32)  # greedy: temperature 0
answer = processor.decode(new[0], skip_special_tokens=True).strip()
plt.figure(figsize=(2.5, 2.5))
plt.imshow(photo)
plt.axis("off")
print("question:", example["question"])
print("answer:  ", repr(answer), "| expected:", repr(example["answer"]))
print("tokens:  ", [processor.tokenizer.id_to_token(t) for t in new[0].tolist()])
'''),
        md('''
One example proves little: the same greedy decoding on the first 20 held-out questions (four of each kind).
'''),
        code('''
right = []
for ex in shapes.split("test", 20):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex["question"]}]}]
    inp = processor(text=processor.apply_chat_template(conv, add_generation_prompt=True), images=ex["image"])
    out = generate(model, inp["input_ids"], inp["pixel_values"], max_new_tokens=32)
    right.append(processor.decode(out[0], skip_special_tokens=True).strip() == ex["answer"])
print(f"{sum(right)} of {len(right)} answered exactly right")
'''),
        md('''
`stream` yields the same answer as text pieces as soon as they are complete characters (the CLI prints them as
they come).
'''),
        code('''
print(list(stream(model, processor, ids, pixel_values, max_new_tokens=32)))
'''),
        md('''
## The first choice

The distribution over the first answer token, from `prefill`'s last-position logits. Temperature divides the
logits before the softmax: below 1 the distribution sharpens toward greedy, above 1 it flattens.
'''),
        code('''
cache = model.new_cache(1, T)
logits = prefill(model, ids, pixel_values, torch.ones(1, T, dtype=torch.long), cache)[0]  # (vocab,) float32
top = logits.topk(8).indices
fig, axes = plt.subplots(1, 3, figsize=(10, 2.2), sharey=True)
for ax, temperature in zip(axes, (0.5, 1.0, 2.0)):
    probs = (logits / temperature).softmax(-1)
    ax.bar(range(len(top)), probs[top].numpy())
    ax.set_xticks(range(len(top)), [repr(processor.decode([t]))[1:-1] for t in top.tolist()], rotation=60, fontsize=7)
    ax.set_title(f"temperature {temperature}")
axes[0].set_ylabel("probability");
'''),
        md('''
## Sampling

Five draws each, with a seeded generator so the notebook is reproducible. With a well-trained model and an
easy question the answers agree; higher temperature, no top-k / top-p filter gives the unlikely tokens their
chance.
'''),
        code('''
settings = [dict(temperature=0.7), dict(temperature=1.5), dict(temperature=1.5, top_k=5), dict(temperature=1.5, top_p=0.9)]
for s in settings:
    g = torch.Generator().manual_seed(0)
    draws = [processor.decode(generate(model, ids, pixel_values, max_new_tokens=16, generator=g, **s)[0],
                              skip_special_tokens=True).strip() for _ in range(5)]
    print(f"{str(s):40s} {draws}")
'''),
        md('''
## Where the answer looks

The last decoder layer's attention, computed by hand. Generation runs with a cache we keep; then the prompt plus
the answer goes through all layers but the last (the model's own modules), and the last layer's queries and keys
are formed as its attention module forms them. The recomputed keys equal the ones the cache held during
generation. For each answer token, the query at the position just before it (the one whose output chose it)
is taken, its softmax over all keys averaged over heads, and the weights on the `<image>` positions are drawn
on the photo the model saw.
'''),
        code('''
from minillava.generation import generate_tokens
from minillava.llama import apply_rotary, rotary_cos_sin

tc = model.config.text_config
cache = model.new_cache(1, T + 32)
answer_ids = [int(t) for t in generate_tokens(model, ids, pixel_values, max_new_tokens=32, cache=cache)]
seq = torch.cat([ids, torch.tensor([answer_ids[:-1]])], dim=1)  # every token that went through the model
S = seq.shape[1]

last = model.language_model.model.layers[-1]
H, KV, hd = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
with torch.no_grad():
    x = model.embed(seq, pixel_values)
    cos, sin = rotary_cos_sin(torch.arange(S)[None], hd, tc.rope_theta, x.dtype)
    for layer in model.language_model.model.layers[:-1]:
        x = layer(x, cos, sin, None, None)  # None: plain causal attention
    h = last.input_layernorm(x)
    q = apply_rotary(last.self_attn.q_proj(h).view(1, S, H, hd).transpose(1, 2), cos, sin)
    k = apply_rotary(last.self_attn.k_proj(h).view(1, S, KV, hd).transpose(1, 2), cos, sin)
print("recomputed keys = cached keys:", torch.allclose(k, cache.k[-1][:, :, :S], atol=1e-5),
      f"(max difference {(k - cache.k[-1][:, :, :S]).abs().max().item():.1e})")

scores = q @ k.repeat_interleave(H // KV, dim=1).transpose(-1, -2) / hd ** 0.5  # (1, H, S, S)
scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
weights = scores.softmax(-1).mean(1)[0]  # (S, S), averaged over heads

is_image = seq[0] == model.config.image_token_index
grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
rows = range(T - 1, T - 1 + len(answer_ids))  # the query that chose answer token i sits at T - 1 + i
shown = [(r, t) for r, t in zip(rows, answer_ids) if t not in (processor.eos_token_id,)][:5]
fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2.2 * (len(shown) + 1), 2.5))
axes[0].imshow(to_image(pixel_values[0]))
axes[0].set_title("input")
for ax, (r, t) in zip(axes[1:], shown):
    on_image = weights[r, is_image]
    heat = on_image[len(on_image) - grid * grid:].reshape(grid, grid)  # a "full" strategy's class token is dropped
    ax.imshow(to_image(pixel_values[0]))
    ax.imshow(heat, cmap="inferno", alpha=0.6, extent=(0, pixel_values.shape[-1], pixel_values.shape[-2], 0))
    ax.set_title(f"-> {processor.decode([t])!r}\\n{on_image.sum():.0%} on the image", fontsize=8)
for ax in axes:
    ax.axis("off")
'''),
        md('''
How the attention of those queries splits between the image, the text of the prompt and the BOS token (which
often collects attention that has nowhere better to go: an "attention sink").
'''),
        code('''
bos = torch.zeros(S, dtype=torch.bool)
bos[0] = True
for r, t in shown:
    w = weights[r]
    print(f"-> {processor.decode([t])!r:14s} image {w[is_image].sum():.2f}   BOS {w[bos].sum():.2f}   "
          f"other text {w[~is_image & ~bos].sum():.2f}")
'''),
    ]


def nb07():
    return [
        md('''
# 07 · Parity with transformers, stage by stage

minillava's claim is that it computes what transformers 5.23's `LlavaForConditionalGeneration` and
`AutoProcessor` compute on the same folder. This notebook checks it at every stage, for the checkpoint in use:
pixels, the selected vision hidden states, the projector output, the merged embeddings, the logits and the
greedy tokens. Both run in float32 on the CPU. This is the only notebook that imports transformers.
'''),
        code(SETUP + example(3, "shape")),
        code('''
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
import transformers
from transformers import AutoProcessor, LlavaForConditionalGeneration

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
print("transformers", transformers.__version__, "| torch", torch.__version__)
ref = LlavaForConditionalGeneration.from_pretrained(FOLDER, dtype=torch.float32).eval()
ref_processor = AutoProcessor.from_pretrained(FOLDER, backend="pil")  # the PIL image backend, as minillava's default

conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
print("same prompt:", prompt == ref_processor.apply_chat_template(conversation, add_generation_prompt=True))
ours_in = processor(text=prompt, images=photo)
theirs_in = ref_processor(text=prompt, images=photo, return_tensors="pt")
'''),
        md('''
Each stage is computed by both libraries from the same inputs, and compared by the largest absolute
difference (0 means bit-identical).
'''),
        code('''
diffs = {}
def compare(stage, ours, theirs):
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape, (stage, ours.shape, theirs.shape)
    diffs[stage] = (ours.double() - theirs.double()).abs().max().item()
    print(f"{stage:28s} {str(tuple(ours.shape)):18s} max |diff| = {diffs[stage]:.3g}")

cfg = model.config
ids, pv = ours_in["input_ids"], ours_in["pixel_values"]
compare("input_ids", ids, theirs_in["input_ids"])
compare("pixel_values", pv, theirs_in["pixel_values"])
with torch.no_grad():
    hs = ref.model.vision_tower(pixel_values=pv, output_hidden_states=True).hidden_states
    for layer, h in zip(cfg.feature_layers, model.vision_tower(pv, cfg.feature_layers)):
        compare(f"vision hidden_states[{layer}]", h, hs[layer])
    ref_features = ref.get_image_features(pixel_values=pv, vision_feature_layer=cfg.vision_feature_layer,
                                         vision_feature_select_strategy=cfg.vision_feature_select_strategy).pooler_output
    compare("projector output", model.image_features(pv), torch.stack(list(ref_features)))
    ref_out = ref.model(input_ids=ids, pixel_values=pv, output_hidden_states=True)
    compare("merged embeddings", model.embed(ids, pv), ref_out.hidden_states[0])  # the decoder's input
    ours_logits, theirs_logits = model(ids, pv), ref(input_ids=ids, pixel_values=pv).logits
    compare("logits", ours_logits, theirs_logits)
'''),
        md('''
The logits of the last prompt position (the distribution of the first answer token), one point per vocabulary
entry: on the diagonal when the two agree.
'''),
        code('''
x, y = theirs_logits[0, -1].numpy(), ours_logits[0, -1].numpy()
plt.figure(figsize=(3, 3))
plt.plot([x.min(), x.max()], [x.min(), x.max()], color="0.8", lw=3)
plt.scatter(x, y, s=2)
plt.xlabel("transformers")
plt.ylabel("minillava")
plt.title("last-position logits");
'''),
        md('''
## Greedy tokens

transformers' `generate` with `do_sample=False` against `minillava.generate`, both stopping at EOS.
'''),
        code('''
from minillava.generation import generate

N = 24
ours_tokens = generate(model, ids, pv, max_new_tokens=N)[0].tolist()
with torch.no_grad():
    theirs_tokens = ref.generate(input_ids=ids, pixel_values=pv, attention_mask=ours_in["attention_mask"],
                                 max_new_tokens=N, do_sample=False)[0, ids.shape[1]:].tolist()
print("minillava:   ", repr(processor.decode(ours_tokens, skip_special_tokens=True)))
print("transformers:", repr(ref_processor.decode(theirs_tokens, skip_special_tokens=True)))
print("identical tokens:", ours_tokens == theirs_tokens, f"({len(ours_tokens)} tokens)")
print("every stage within 1e-5 (the tolerance of tests/test_model.py):", max(diffs.values()) <= 1e-5)
'''),
    ]


NOTEBOOKS = {"01_pixels": nb01, "02_vision_tower": nb02, "03_projector": nb03, "04_decoder": nb04,
             "05_prompt_and_merge": nb05, "06_generation": nb06, "07_parity": nb07}


def build(name):
    nb = nbformat.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb, timeout=120):
    # One thread per kernel unless told otherwise: the demo is tiny, and extra threads on a busy machine cost
    # more than they gain (the timings printed in 04_decoder come from this setting).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (a prefix such as 04 is enough); default all")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.names or any(n.startswith(a) for a in args.names)]
    for name in names:
        nb = build(name)
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        size = (HERE / f"{name}.ipynb").stat().st_size
        print(f"{name}.ipynb  {size / 1024:6.1f} KiB  {time.perf_counter() - start:5.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
