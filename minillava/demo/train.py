"""Train the embedded demo: a tiny LLaVA that answers questions about drawn shapes (minillava/demo/shapes.py).

    python -m minillava.demo.train                         # into runs/demo-<date>; ~30 minutes on 2 CPU cores
    python -m minillava.demo.train --replace-demo          # into minillava/demo, the shipped checkpoint
    python -m minillava.demo.train --eval minillava/demo   # the held-out evaluation (minillava/demo/evaluate.py)

The paper's recipe in miniature (Liu et al. 2023, "Improved Baselines", section 3), saved in the exact
llava-hf layout so that transformers' LlavaForConditionalGeneration loads it too:
- stage 0 stands in for CLIP: LLaVA starts from a pretrained vision tower and keeps it frozen. Nothing
  here is pretrained, so the tower first learns, with a throw-away linear head, to name the colour,
  shape and grid cell under every patch; then it is frozen.
- stage 1, alignment: the projector and the (untrained) decoder learn to caption ("Describe the image."
  -> a sentence naming every shape, its colour and its place). LLaVA freezes its pretrained decoder here;
  ours has nothing to keep yet, so it learns too.
- stage 2, instruction tuning: conversations of 1-5 questions of every kind about one image, in any order,
  sometimes after questions asked with no image (minillava/demo/conversations.py); projector and decoder trained.
The loss is on the answer tokens only, through the model's own forward. Everything is seeded and the schedule
counts steps, so the result does not depend on how busy the machine is.
"""
import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import training
from ..checkpoint import padded_vocab_size, save_weights, write_json, write_processor_configs
from ..config import LlavaConfig
from ..llava import Llava
from ..loading import load_model
from ..processor import Processor
from . import conversations, shapes
from .evaluate import VALIDATION_SEED, conversation_set, evaluate, plot_curve, table
from .tokenizer import build_tokenizer

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
# steps of batch 32: stage 0 (tower), stage 1 (captions), stage 2 (conversations), of which the last part decays
STEPS = {"tower": 2500, "captions": 300, "conversations": 4200, "decay": 1200}
EVAL_EVERY = 500  # steps between two points of the training curve


def write_folder_files(out, image_id):
    """config.json and the processor files, in the llava-hf layout."""
    cfg = json.loads(json.dumps(CONFIG))
    cfg["image_token_index"], cfg["pad_token_id"] = image_id, image_id + 1
    cfg["text_config"]["vocab_size"] = padded_vocab_size(image_id)  # n pieces + <image> + <pad>, to a multiple of 64
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": image_id + 1})
    config = LlavaConfig.from_dict(cfg)
    write_processor_configs(out, config)
    return config


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


def pretrain_tower(model, processor, rng, steps, batch_size=32, lr=1e-3):
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
    loss = None
    for _ in range(steps):
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


def train(out, steps=STEPS, batch_size=32, lr=1e-3, seed=0):
    """steps: dict(tower, captions, conversations, decay): stage 0, stage 1, stage 2 and the decay at its end."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    out = Path(out)
    image_id = build_tokenizer(out)
    config = write_folder_files(out, image_id)
    processor = Processor.from_pretrained(out, config=config)
    model = Llava(config)
    init_weights(model)
    start, cpu_start = time.time(), time.process_time()
    tower_loss = pretrain_tower(model, processor, rng, steps["tower"])
    print(json.dumps({"minutes": round((time.time() - start) / 60, 2), "stage": 0, "loss": round(tower_loss, 4)}),
          flush=True)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the projector and the decoder
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    # the curve is measured on validation conversations; the test ones are only used once, at the end
    validation = conversation_set(VALIDATION_SEED, n_trained=48, n_withheld=24, n_casual=0, n_later=0, n_no_image=8)
    n1, n2, n_decay = steps["captions"], steps["conversations"], steps["decay"]
    curve, source = [], {stage: conversations.batches(rng, stage, batch_size) for stage in (1, 2)}
    for i in range(n1 + n2):
        stage = 1 if i < n1 else 2
        # warm-up over 100 steps, constant rate, then a linear decay to 2% over the last n_decay steps
        scale = min(1.0, (i + 1) / 100) * min(1.0, max(0.02, (n1 + n2 - i) / max(n_decay, 1)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        ids, labels, pv = conversations.batch(processor, next(source[stage]))
        logits = model(ids, pv)  # (B, T, vocab)
        loss = training.loss(logits, labels)  # on the labelled tokens: the answers
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step = steps["tower"] + i + 1
        if (i + 1) % EVAL_EVERY == 0 or i + 1 == n1 + n2:
            summary, _ = evaluate(model, processor, validation)
            curve.append({"step": step, "minutes": round((time.time() - start) / 60, 2), "stage": stage,
                          "loss": round(loss.item(), 4), **summary})
            overall = {k: summary[k]["overall"][0] for k in ("trained", "withheld")}
            print(json.dumps({k: curve[-1][k] for k in ("step", "minutes", "stage", "loss")} | overall), flush=True)
    save_weights(model.state_dict(), out)  # the module names are already the hub's keys
    train_minutes, cpu_minutes = (time.time() - start) / 60, (time.process_time() - cpu_start) / 60
    summary, records = evaluate(load_model(out), processor)
    log = {"train_minutes": round(train_minutes, 1), "cpu_minutes": round(cpu_minutes, 1), "steps": steps,
           "stage_starts": [0, steps["tower"], steps["tower"] + n1], "batch_size": batch_size,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "test": summary, "curve": curve,
           "test_errors": [r for r in records if r["answer"] != r["reference"]][:200]}
    write_json(out / "training_log.json", log)
    example = shapes.sample(7, "colour")  # the README's example image
    example["image"].save(out / "example.png")
    plot_curve(out)
    print(table(summary))
    print(json.dumps({"train_minutes": log["train_minutes"], "cpu_minutes": log["cpu_minutes"], "out": str(out)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="the folder to write (default: runs/demo-<UTC date and time>)")
    ap.add_argument("--replace-demo", action="store_true", help=f"write into {HERE}, replacing the shipped demo")
    ap.add_argument("--eval", default=None, metavar="FOLDER", help="only evaluate FOLDER on the held-out conversations")
    ap.add_argument("--steps", type=int, nargs=4, default=list(STEPS.values()),
                    metavar=("TOWER", "CAPTIONS", "CONVERSATIONS", "DECAY"),
                    help="steps of stage 0, stage 1, stage 2 and the decay at the end of stage 2 (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default=None, metavar="FOLDER", help="only draw FOLDER/training_curve.png from its log")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.plot:
        return plot_curve(a.plot)
    if a.eval:
        model = load_model(a.eval)
        summary, _ = evaluate(model, Processor.from_pretrained(a.eval, config=model.config))
        print(table(summary))
        return
    out = HERE if a.replace_demo else a.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M", time.gmtime())
    train(out, steps=dict(zip(STEPS, a.steps)))


if __name__ == "__main__":
    main()
