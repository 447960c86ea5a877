"""Train the embedded demo: a tiny LLaVA that answers questions about drawn shapes (minillava/demo/shapes.py).

    python -m minillava.demo.train --out minillava/demo # ~40 minutes on 2 CPU cores
    python -m minillava.demo.train --eval minillava/demo     # accuracy on the 500 held-out questions

The paper's recipe in miniature (Liu et al. 2023, "Improved Baselines", section 3), saved in the exact
llava-hf layout so that transformers' LlavaForConditionalGeneration loads it too:
- stage 0 stands in for CLIP: LLaVA starts from a pretrained vision tower and keeps it frozen. Nothing
  here is pretrained, so the tower first learns, with a throw-away linear head, to name the colour,
  shape and grid cell under every patch; then it is frozen.
- stage 1, alignment: the projector and the (untrained) decoder learn to caption ("Describe the image."
  -> a sentence naming every shape, its colour and its place). LLaVA freezes its pretrained decoder here;
  ours has nothing to keep yet, so it learns too.
- stage 2, instruction tuning: conversations of 1-4 questions about one image (all five kinds, more of the
  ones that need colour, shape and place bound together), projector and decoder trained.
The loss is on the answer tokens only, through the model's own forward. Everything is seeded; the wall
clock decides the number of steps, so a busier machine trains fewer.
"""
import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ..checkpoint import save_weights, write_json, write_processor_configs
from ..config import LlavaConfig
from ..generation import generate
from ..llava import Llava
from ..loading import load_model
from ..processor import Processor
from . import shapes

HERE = Path(__file__).parent
PATCH = 16  # 96 px / 16 = a 6 x 6 grid: each cell of the scene's 3 x 3 layout is exactly 2 x 2 patches
CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": None,
    "pad_token_id": None, "projector_hidden_act": "gelu", "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default", "image_seq_length": (shapes.IMAGE_SIZE // PATCH) ** 2,
    "tie_word_embeddings": False, "torch_dtype": "float32",
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 128, "intermediate_size": 384,
                      "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": shapes.IMAGE_SIZE,
                      "patch_size": PATCH, "projection_dim": 128},
    "text_config": {"model_type": "llama", "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
                    "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                    "rms_norm_eps": 1e-5, "vocab_size": None, "bos_token_id": 1, "eos_token_id": 2},
}
STAGE2_KINDS = {"colour": 2, "shape": 2, "position": 4, "count": 1}  # how often each kind is asked in stage 2
STAGE2_DESCRIBE = 0.2  # the share of stage-2 conversations that are one description
# The share of stage-2 scenes whose shapes share colours and shapes (shapes.draw_scene(confusable=True)).
# In natural scenes most position questions can be answered from the colour or the shape alone; without
# these the model never learns to bind the two and answers with the place of another green shape.
STAGE2_CONFUSABLE = 0.5
MINUTES = (2, 2, 26, 8)  # stage 0 (tower), stage 1 (captions), stage 2 (conversations), final decay


# --- the tokenizer: a Llama-style BPE with byte fallback, trained on every text the dataset has -------

def build_tokenizer(out):
    words = shapes.all_texts() + [shapes.sample(i, "description")["answer"] for i in range(500)]
    words += ["USER: ASSISTANT:"] * 50
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")  # merges stay inside words
    bpe.train_from_iterator(words, trainers.BpeTrainer(vocab_size=10_000, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    learned = json.loads(bpe.to_str())["model"]
    # Llama's id layout: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then the learned pieces
    vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    vocab += [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if t not in vocab]
    n = len(vocab)
    special = dict(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    added = [dict(id=i, content=t, **special) for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    added += [dict(id=n, content="<image>", **special), dict(id=n + 1, content="<pad>", **special)]
    # the Llama-2 tokenizer.json layout (what llava-hf ships): a normalizer that prepends "▁" and turns
    # spaces into "▁", no pre-tokenizer, BOS added by the post-processor, byte fallback in the decoder
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                               {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": None,
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                        {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                         {"type": "ByteFallback"}, {"type": "Fuse"},
                                                         {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                      "vocab": {t: i for i, t in enumerate(vocab)},
                      "merges": [m if isinstance(m, str) else " ".join(m) for m in learned["merges"]]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
    decoder = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
               for a in added}
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "legacy": True, "padding_side": "left",
        "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False})
    write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                 "pad_token": "<pad>"})
    write_json(out / "added_tokens.json", {"<image>": n, "<pad>": n + 1})
    return n  # the id of <image>; <pad> is n + 1


def write_folder_files(out, image_id):
    """config.json and the processor files, in the llava-hf layout."""
    cfg = json.loads(json.dumps(CONFIG))
    cfg["image_token_index"], cfg["pad_token_id"] = image_id, image_id + 1
    cfg["text_config"]["vocab_size"] = math.ceil((image_id + 2) / 64) * 64  # padded to a multiple of 64, as llava-hf
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": image_id + 1})
    config = LlavaConfig.from_dict(cfg)
    write_processor_configs(out, config)
    return config



# --- data: conversations about one image, rendered exactly as the chat template renders them ---------

def render(turns):
    """[(question, answer), ...] -> the prompt string of every turn and the whole text.
    The llava-1.5 template gives "USER: <image>\\n{q1} ASSISTANT: {a1} USER: {q2} ASSISTANT: {a2} ..." (no </s>
    between turns); the last answer is followed by </s>, which is what makes generation stop."""
    prompts, text = [], ""
    for i, (q, a) in enumerate(turns):
        text += ("USER: <image>\n" if i == 0 else " USER: ") + q + " ASSISTANT:"
        prompts.append(text)
        text += " " + a
    return prompts, text + "</s>"


def prompt_of(question):
    return render([(question, "")])[0][0]  # "USER: <image>\n{question} ASSISTANT:"


def conversation(rng, stage):
    """Stage 1: one caption ("Describe the image."). Stage 2: 1-4 questions about one image, the answer
    to each a single word or phrase, or a single description (LLaVA-1.5 also packs the questions about
    one image into one multi-turn conversation: the image is encoded once for several answers)."""
    seed = rng.randrange(10**9)  # the training seeds; the held-out split starts at 10**9
    confusable = stage == 2 and rng.random() < STAGE2_CONFUSABLE
    if stage == 1 or rng.random() < STAGE2_DESCRIBE:
        ex = shapes.sample(seed, "description", confusable=confusable)
        return ex["image"], [(ex["question"], ex["answer"])]
    kinds = rng.choices(list(STAGE2_KINDS), weights=list(STAGE2_KINDS.values()), k=rng.randint(1, 4))
    ex = shapes.sample(seed, kinds[0], confusable=confusable)
    turns, qrng = [(ex["question"], ex["answer"])], random.Random(seed + 1)
    for kind in kinds[1:]:
        q, a = shapes.ask(qrng, ex["objects"], kind) if kind in shapes.possible_kinds(ex["objects"]) else (None, None)
        if q and a not in [t[1] for t in turns if kind == "count"] and q not in [t[0] for t in turns]:
            turns.append((q, a))
    return ex["image"], turns


def batch(processor, conversations):
    """Right-padded training batch: ids, labels (-100 except on the answers and the final </s>), pixel_values."""
    pv = processor.preprocess([image for image, _ in conversations])
    expand = "<image>" * processor.num_image_tokens(*pv.shape[-2:])
    encode = lambda t: processor.tokenizer.encode(t.replace("<image>", expand)).ids
    seqs, labels = [], []
    for _, turns in conversations:
        prompts, text = render(turns)
        ids = encode(text)
        lab = [-100] * len(ids)
        ends = [len(encode(p + " " + a)) for p, (_, a) in zip(prompts[:-1], turns[:-1])] + [len(ids)]
        for p, end in zip(prompts, ends):  # the tokens of each answer (+ </s> after the last one)
            start = len(encode(p))
            assert ids[:start] == encode(p), "an answer must not change how its prompt tokenizes"
            lab[start:end] = ids[start:end]
        seqs.append(ids)
        labels.append(lab)
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), processor.pad_token_id)
    lab = torch.full((len(seqs), T), -100)
    for i, (s, labelled) in enumerate(zip(seqs, labels)):  # pads go at the end: causal attention never sees them
        ids[i, :len(s)], lab[i, :len(labelled)] = torch.tensor(s), torch.tensor(labelled)
    return ids, lab, pv


# --- evaluation -------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, processor, examples, batch_size=50):
    """Exact-match accuracy of greedy answers, overall and per kind."""
    model.eval()
    right = {k: [0, 0] for k in shapes.KINDS}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        inputs = processor(text=[prompt_of(e["question"]) for e in chunk], images=[e["image"] for e in chunk])
        out = generate(model, inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], max_new_tokens=40)
        for e, ids in zip(chunk, out):
            right[e["kind"]][0] += processor.decode(ids, skip_special_tokens=True).strip() == e["answer"]
            right[e["kind"]][1] += 1
    model.train()
    acc = {k: r / n for k, (r, n) in right.items() if n}
    acc["overall"] = sum(r for r, _ in right.values()) / sum(n for _, n in right.values())
    return acc


# --- training ---------------------------------------------------------------------------------------

def init_weights(model, std=0.02):
    """GPT-2-style init for training from scratch: N(0, 0.02) weights, zero biases, and the projections
    that write into a residual stream scaled down by sqrt(2 x layers), so the stream starts small.
    (PyTorch's defaults are far from this: nn.Embedding draws N(0, 1), and the CLIP class embedding
    is left unset, since minillava normally fills every weight from a checkpoint.)"""
    n_layers = max(model.config.text_config.num_hidden_layers, model.config.vision_config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:  # LayerNorm / RMSNorm gains
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "out_proj.weight", "fc2.weight")):
                p.normal_(0, std / math.sqrt(2 * n_layers))
            else:
                p.normal_(0, std)


def pretrain_tower(model, processor, rng, seconds, batch_size=32, lr=1e-3):
    """Stage 0, a stand-in for CLIP's pretraining (LLaVA starts from a pretrained, frozen tower): the tower
    learns to name the colour, the shape and the grid cell under every patch, through a linear head that is
    then thrown away. Learning shapes end to end through a decoder that is itself untrained was too slow: after 25
    minutes shape questions were still at chance, while this dense signal teaches them in a minute."""
    cfg = model.config
    grid = cfg.vision_config.image_size // cfg.vision_config.patch_size
    cell = shapes.IMAGE_SIZE // 3
    # the scene cell (0-8) under the centre of each patch, row-major like the patch tokens
    cell_of = torch.tensor([(r * cfg.vision_config.patch_size + cfg.vision_config.patch_size // 2) // cell * 3 +
                            (c * cfg.vision_config.patch_size + cfg.vision_config.patch_size // 2) // cell
                            for r in range(grid) for c in range(grid)])
    colors = list(shapes.COLORS)
    n_color, n_shape = len(colors) + 1, len(shapes.SHAPES) + 1  # class 0 = nothing there
    head = torch.nn.Linear(cfg.vision_config.hidden_size, n_color + n_shape + 9)  # + which of the 9 cells
    opt = torch.optim.AdamW(list(model.vision_tower.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    end, loss = time.time() + seconds, None
    while time.time() < end:
        examples = [shapes.sample(rng.randrange(10**9)) for _ in range(batch_size)]
        color, shape = torch.zeros(batch_size, 9, dtype=torch.long), torch.zeros(batch_size, 9, dtype=torch.long)
        for i, e in enumerate(examples):
            for o in e["objects"]:
                color[i, o["row"] * 3 + o["col"]] = 1 + colors.index(o["color"])
                shape[i, o["row"] * 3 + o["col"]] = 1 + shapes.SHAPES.index(o["shape"])
        h = model.vision_tower(processor.preprocess([e["image"] for e in examples]), cfg.feature_layers)[0][:, 1:]
        z = head(h)  # (B, n_patches, colours + shapes + cells)
        loss = (F.cross_entropy(z[..., :n_color].flatten(0, 1), color[:, cell_of].flatten()) +
                F.cross_entropy(z[..., n_color:n_color + n_shape].flatten(0, 1), shape[:, cell_of].flatten()) +
                F.cross_entropy(z[..., n_color + n_shape:].flatten(0, 1), cell_of.repeat(batch_size)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in model.vision_tower.parameters():  # frozen from here on, as in both stages of LLaVA
        p.requires_grad_(False)
    return loss.item()


def train(out, minutes=MINUTES, batch_size=32, lr=1e-3, seed=0):
    """minutes: stage 0 (tower), stage 1 (captions), stage 2 (conversations), and the final decay of stage 2."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    out = Path(out)
    image_id = build_tokenizer(out)
    config = write_folder_files(out, image_id)
    processor = Processor.from_pretrained(out, config=config)
    model = Llava(config)
    init_weights(model)
    start = time.time()
    tower_loss = pretrain_tower(model, processor, rng, minutes[0] * 60)
    print(json.dumps({"minutes": round((time.time() - start) / 60, 2), "stage": 0, "loss": round(tower_loss, 4)}), flush=True)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the projector and the decoder
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    # the curve is measured on a validation set; the 500 test questions are only used once, at the end
    held_out = [shapes.sample(2 * 10**9 + i, shapes.KINDS[i % 5]) for i in range(100)]
    stages = [(1, minutes[1] * 60), (2, (minutes[2] + minutes[3]) * 60)]
    decay_from = sum(minutes[:3]) * 60  # constant rate, then a short linear decay to 0
    total = sum(minutes) * 60
    curve, step, next_eval = [], 0, 0.0
    for stage, seconds in stages:
        stage_end = time.time() + seconds
        while time.time() < stage_end:
            elapsed = time.time() - start
            decay = 1.0 if elapsed < decay_from else max(0.02, (total - elapsed) / (total - decay_from))
            scale = min(1.0, (step + 1) / 100) * decay
            for g in opt.param_groups:
                g["lr"] = lr * scale
            ids, labels, pv = batch(processor, [conversation(rng, stage) for _ in range(batch_size)])
            logits = model(ids, pv)  # (B, T, vocab)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            step += 1
            if elapsed >= next_eval:
                acc = evaluate(model, processor, held_out)
                curve.append({"minutes": round(elapsed / 60, 2), "step": step, "stage": stage, "loss": round(loss.item(), 4),
                              **{k: round(v, 3) for k, v in acc.items()}})
                print(json.dumps(curve[-1]), flush=True)
                next_eval = elapsed + 120
    save_weights(model.state_dict(), out)  # the module names are already the hub's keys
    acc = evaluate(load_model(out), processor, shapes.split("test", 500))
    log = {"train_minutes": round((time.time() - start) / 60, 1), "steps": step, "batch_size": batch_size,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "test_accuracy": acc, "curve": curve}
    write_json(out / "training_log.json", log)
    example = shapes.sample(7, "colour")  # the README's example image
    example["image"].save(out / "example.png")
    plot_curve(out)
    print(json.dumps({"test_accuracy": acc, "minutes": log["train_minutes"]}))


def plot_curve(folder):
    """training_curve.png: validation accuracy per question kind against training time (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    log = json.loads((Path(folder) / "training_log.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 3))
    for kind in shapes.KINDS + ["overall"]:
        ax.plot([c["minutes"] for c in log["curve"]], [c[kind] for c in log["curve"]], label=kind,
                lw=2.5 if kind == "overall" else 1, color="k" if kind == "overall" else None)
    ax.set_xlabel("minutes of training on 2 CPU cores (stage 0 = tower, then captions, then conversations)")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(Path(folder) / "training_curve.png", dpi=70)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--eval", default=None, metavar="FOLDER", help="only evaluate FOLDER on the 500 held-out questions")
    ap.add_argument("--minutes", type=float, nargs=4, default=MINUTES,
                    help="stage 0 (tower), stage 1 (captions), stage 2 (conversations), final decay")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default=None, metavar="FOLDER", help="only draw FOLDER/training_curve.png from its log")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.plot:
        return plot_curve(a.plot)
    if a.eval:
        model = load_model(a.eval)
        print(json.dumps(evaluate(model, Processor.from_pretrained(a.eval, config=model.config), shapes.split("test", 500))))
        return
    train(a.out, minutes=a.minutes)


if __name__ == "__main__":
    main()
