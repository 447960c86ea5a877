"""Every number the README and the notebooks state in prose is checked against what the code produces now.

- A notebook's text may state a number only if one of its outputs prints it (to the precision stated: "0.54"
  stands for a printed 0.537), or if it is a fact of the real llava-1.5 checkpoints (computed here from their
  config.json, `benchmarks/slice7b.py`), or a citation (a year, a section or figure of a paper). The committed
  outputs are checked here; tests/test_notebooks.py checks the outputs of a fresh run the same way. So after the
  demo is retrained or the code changes, `python notebooks/run.py` and this suite name every number in the text
  that no longer holds.
- The README's map of the model ("How LLaVA-1.5 works"): every shape in the diagram is recomputed, the demo's by
  running it on the notebooks' picture and question, llava-1.5-7b's by running its config on the meta device
  (shapes without weights) with the real Llama 2 tokenizer; the table of sizes is recomputed from both configs.
- The README's example output of `minillava compare` is what the command prints now, for the case the text
  describes.
- Every other number in the README is produced by the code or the files it names (configs, the demo's
  training_log.json, the benchmarks' results files, pyproject.toml, the tests' tolerances) or listed in LISTED with
  where it comes from.
"""
import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import math
import re
import signal
import statistics
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import minillava
from minillava import limits, testing
from minillava.demo import conversations, evaluate, shapes, wordings
from tests.helpers.tokenizer_files import TOKENIZERS, write_processor_files

nbformat = pytest.importorskip("nbformat", reason="the test extra's nbformat is not installed here")

ROOT = Path(__file__).parent.parent
NOTEBOOKS = ROOT / "notebooks"
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUESTION_SEED = shapes.SEED_BASE["test"] + 2  # the notebooks' picture and question (each notebook's first cell)
QUESTION = "Please describe the image."  # the notebooks' question, one of the trained wordings

# A number as prose writes it: 36, 32,064, 0.54, 1e-5, 44%, 1.3x. Not part of a name (linear_1, ViT-L/14,
# 01_pixels), not a version or a path.
NUMBER = re.compile(r"(?<![\w.\-/^@:])(\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?)(%|x(?![\w/]))?(?![\w/]|\.\d)")
# citations (a year, a section, figure or table), references to a step or a version: not claims about outputs
CITATION = re.compile(r"(?:§|\bsections?\s|\bFigure\s|\bTable\s|\b[Ss]teps?\s|\btransformers\s|\btorch\s"
                      r"|\bLlama\s)[\d.\-–]*\d|\b(?:19|20)\d\d\b|arXiv:\S+")


def prose(markdown):
    """The sentences of a markdown text: no code blocks, inline code, folded solutions, links' targets, quotations,
    citations, list markers or notebook numbers (01 .. 09)."""
    text = re.sub(r"<details>.*?</details>", " ", markdown, flags=re.S)
    text = re.sub(r"^```.*?^```", " ", text, flags=re.S | re.M)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)|<https?://[^>]*>", " ", text)
    text = re.sub(r'"[^"\n]*"', " ", text)  # quotations: titles, questions
    text = CITATION.sub(" ", text)
    text = re.sub(r"^\s*(?:\d+\.|\*\*\d+\.\*\*)\s", " ", text, flags=re.M)  # "1. convert ...", "**2.** ..."
    return re.sub(r"\b0\d\b", " ", text)  # notebook 04, (05)


def numbers(text):
    """[(as written, value, decimals, percent)] of every number in `text`."""
    found = []
    for digits, suffix in NUMBER.findall(text):
        plain = digits.replace(",", "")
        decimals = len(plain.split(".")[1].split("e")[0]) if "." in plain else 0
        found.append((digits + (suffix or ""), float(plain), decimals, suffix == "%"))
    return found


def holds(stated, printed):
    """Whether the stated number is one of the printed ones, to the precision it is stated with."""
    _, value, decimals, percent = stated
    for _, p, p_decimals, p_percent in printed:
        candidates = [p] if percent == p_percent else [p * 100] if percent and not p_percent else []
        for c in candidates:
            if "e" in stated[0]:  # 1e-5, 3.9e-3: the same value to the stated significant digits
                if c and math.isclose(c, value, rel_tol=0.5 * 10 ** -decimals):
                    return True
            elif round(c, decimals) == value and (decimals or p_decimals == 0 or c == int(c)):
                return True
    return False


@lru_cache(maxsize=1)
def llama2():
    """The real Llama 2 tokenizer of llava-1.5 (tests/fixtures), without llava-hf's added tokens."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(TOKENIZERS["llama2"]))


@lru_cache(maxsize=1)
def config_7b():
    spec = importlib.util.spec_from_file_location("slice7b", ROOT / "benchmarks" / "slice7b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return minillava.LlavaConfig.from_dict(module.config_7b()), minillava.LlavaConfig.from_dict(
        module.config_7b(module.TEXT_13B))


@lru_cache(maxsize=1)
def parameters_7b():
    with torch.device("meta"):
        return sum(p.numel() for p in minillava.Llava(config_7b()[0]).parameters())


@lru_cache(maxsize=1)
def real_facts():
    """The numbers of the real checkpoints that the text may state without printing them, each computed."""
    c7, c13 = config_7b()
    v, t = c7.vision_config, c7.text_config
    grid = v.image_size // v.patch_size
    llama_vocab = llama2().get_vocab_size()  # <image> and <pad> follow it
    facts = [v.image_size, v.patch_size, grid, v.num_patches, v.num_patches + 1, v.num_hidden_layers,
             v.num_hidden_layers + 1, c7.feature_layers[0], v.hidden_size, v.num_attention_heads,
             t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.intermediate_size, t.vocab_size,
             llama_vocab, c7.image_token_index, c7.pad_token_id, t.vocab_size - llama_vocab - 2,
             c13.text_config.hidden_size, c13.text_config.num_hidden_layers, c13.text_config.intermediate_size,
             round(parameters_7b() * 4 / 1e9)]  # GB in float32
    assert c7.image_token_index == llama_vocab and t.vocab_size == math.ceil((llama_vocab + 2) / 64) * 64
    return [(str(f), float(f), 0, False) for f in facts]


def dataset_facts():
    """The demo dataset's layout: shapes on a 3 x 3 grid of cells."""
    return [(str(len(shapes.POSITIONS)), float(len(shapes.POSITIONS)), 0, False)]


def unaccounted(nb):
    """The numbers a notebook's markdown states that none of its outputs prints and that are no known fact,
    as [(cell index, number as written)]."""
    printed = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out.get("text", "")
            else:
                text = out.get("data", {}).get("text/plain", "")
            printed += numbers(text)
    known = printed + real_facts() + dataset_facts()
    exercises = next((i for i, c in enumerate(nb.cells) if c.source.startswith("## Exercises")), len(nb.cells))
    # the exercises' numbers are the givens of questions, whose answers `check` verifies
    return [(i, stated[0]) for i, cell in enumerate(nb.cells[:exercises]) if cell.cell_type == "markdown"
            for stated in numbers(prose(cell.source)) if not holds(stated, known)]


NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("name", NAMES)
def test_every_number_in_a_notebooks_text_is_printed_by_its_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert not unaccounted(nb), f"{name}: numbers in the text that no output prints (cell, number): {unaccounted(nb)}"


def test_the_number_check_catches_a_stale_number():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("The logits are [1, 49, 512]; 0.54 and 44%."),
                                         nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output(
                                             "stream", text="logits (1, 47, 704) p 0.537 share 0.44 [1]")])])
    assert [n for _, n in unaccounted(nb)] == ["49", "512"]


# --- the README ----------------------------------------------------------------------------------------------

def section(title):
    """The text of the README section `## title`, up to the next `## ` heading."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 3)
    return README[start:end if end > 0 else len(README)]


def marked(name):
    return re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", README, re.S).group(1)


@lru_cache(maxsize=1)
def example_inputs():
    """The notebooks' picture and question, as the demo's processor and as llava-1.5-7b-hf's (the real Llama 2
    tokenizer, 336-pixel crop) prepare them."""
    example = shapes.sample(QUESTION_SEED, kind="description", templates={"description": [QUESTION]})
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
    model, processor = minillava.load()
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    demo = processor(text=prompt, images=example["image"])
    with tempfile.TemporaryDirectory() as folder:
        write_processor_files(folder, "llama2", config=True)
        real = minillava.Processor.from_pretrained(folder)
        real_prompt = real.apply_chat_template(conversation, add_generation_prompt=True)
        real_inputs = real(text=real_prompt, images=example["image"])
    return example, model, demo, real_inputs


def stage_shapes():
    """{stage: (llava-1.5-7b's shape, the demo's shape)} for the notebooks' picture and question."""
    _, model, demo, real = example_inputs()
    ours = {k: tuple(v.shape) for k, v in model.stages(**demo).items()}
    cfg = config_7b()[0]
    with torch.device("meta"):  # the 7b's shapes without its weights: every module runs on shapes only
        big = minillava.Llava(cfg)
        hidden = big.vision_tower(torch.empty(real["pixel_values"].shape), cfg.feature_layers)
        features = big.select_features(hidden)
        image_features = big.multi_modal_projector(features)
        T = real["input_ids"].shape[1]
        embeds = torch.empty(1, T, cfg.text_config.hidden_size)
        logits = big.language_model(embeds)
    theirs = {"pixel_values": real["pixel_values"].shape, "vision_hidden_states": hidden[0].shape,
              "vision_features": features.shape, "image_features": image_features.shape,
              "input_ids": real["input_ids"].shape, "inputs_embeds": embeds.shape, "logits": logits.shape}
    ours["vision_hidden_states"] = ours.pop(f"vision_hidden_states.{model.config.feature_layers[0]}")
    return {k: (tuple(theirs[k]), ours[k]) for k in theirs}


def test_the_map_of_the_model_shows_the_shapes_the_code_computes():
    rows = re.findall(r"^([a-z_]+)[^(\n]*(\([\d, ]+\))\s+(\([\d, ]+\))\s*$", marked("shapes"), re.M)
    shown = {name: (ast.literal_eval(big), ast.literal_eval(demo)) for name, big, demo in rows}
    assert shown == stage_shapes()
    # the README's Python example names the same logits shape
    assert f"# (1, T, {config_7b()[0].text_config.vocab_size})" in README


def sizes_table():
    """The cells of the README's table of sizes, computed: [(llava-1.5-7b's, the demo's)] row by row."""
    _, model, _, _ = example_inputs()

    def row(cfg):
        v, t = cfg.vision_config, cfg.text_config
        grid = v.image_size // v.patch_size
        return [f"{v.image_size}, {v.patch_size}", f"{v.num_patches} ({grid} x {grid})",
                f"{v.num_hidden_layers}, {v.hidden_size}, {v.num_attention_heads}",
                f"{t.num_hidden_layers}, {t.hidden_size}, {t.num_attention_heads}, {t.num_key_value_heads}",
                f"{t.intermediate_size}", f"{t.vocab_size}"]
    demo_parameters = sum(p.numel() for p in model.parameters())
    return list(zip(row(config_7b()[0]) + [f"{parameters_7b() / 1e9:.2f} B"],
                    row(model.config) + [f"{demo_parameters / 1e6:.1f} M"]))


def test_the_table_of_sizes_is_computed_from_the_configs():
    rows = re.findall(r"^\| [^|]+ \| ([^|]+) \| ([^|]+) \|$", marked("sizes"), re.M)
    assert [(a.strip(), b.strip()) for a, b in rows] == sizes_table()


def test_every_number_of_the_front_door_is_computed():
    example, model, demo, real = example_inputs()
    text_tokens = (real["input_ids"].shape[1] - config_7b()[0].vision_config.num_patches,
                   demo["input_ids"].shape[1] - model.config.vision_config.num_patches)
    computed = [n for shape in stage_shapes().values() for s in shape for n in s] + list(text_tokens)
    computed += [float(n.replace(",", "")) for row in sizes_table() for cell in row
                 for n in re.findall(r"[\d.]+", cell)]
    known = real_facts() + [(str(n), float(n), 0, False) for n in computed]
    front = section("How LLaVA-1.5 works")
    assert example["question"] in front
    stated = [n for n in numbers(prose(front)) if not holds(n, known)]
    assert not stated, f"numbers in README's front door that nothing computes: {stated}"
    # every file of the reading order exists, every notebook is there
    order = front[front.index("**Reading order.**"):]
    for name in re.findall(r"`(\w+\.py)`", order):
        assert (ROOT / "minillava" / name).is_file(), name
    assert re.findall(r"\| `(\d\d_\w+)` \|", order) == NAMES


def same_output(shown, printed):
    """Whether a README block shows what a command printed: the same words and integers, and floats within 2%
    (the last printed digits of a difference of float32 sums vary between machines)."""
    a, b = shown.split(), printed.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not (re.search(r"[.e]", x) and math.isclose(fx, fy, rel_tol=0.02, abs_tol=1e-12)):
            return False
    return True


def test_readme_compare_output_is_what_compare_prints(tmp_path):
    """The README's `minillava compare` output: the demo, "What is this?" about the example picture, against an
    engine whose projector output is 0.05 too large at image 0, token 12, channel 40 (as the text says)."""
    from safetensors.torch import load_file, save_file

    from minillava import cli
    ref, mine = tmp_path / "ref.safetensors", tmp_path / "mine.safetensors"
    with contextlib.redirect_stdout(io.StringIO()):
        image = str(minillava.DEMO / "example.png")
        assert cli.main(["logits", "--image", image, "What is this?", "--out", str(ref)]) == 0
    stages = load_file(ref)
    model, _ = minillava.load()
    wrong = stages["image_features"].clone()
    wrong[0, 12, 40] += 0.05
    with torch.no_grad():
        embeds = model.embed(stages["input_ids"], image_features=wrong)
        logits = model(inputs_embeds=embeds, attention_mask=stages["attention_mask"])
    other = {k: v for k, v in stages.items() if k != "logits"}
    save_file({**other, "image_features": wrong, "inputs_embeds": embeds, "their.logits": logits}, mine)
    out = io.StringIO()
    code = cli.main(["compare", str(ref), str(mine), "--atol", "1e-4", "--rtol", "1e-4",
                     "--map", "their.logits=logits"], stdout=out)
    assert code == 1
    block = re.search(r"```text\n(.*?)```", marked("compare-output"), re.S).group(1)
    assert same_output(block, out.getvalue()), f"README shows:\n{block}\ncompare prints now:\n{out.getvalue()}"
    assert "0.05 too large (image 0,\ntoken 12, channel 40)" in README


def test_same_output_tells_a_stale_block():
    assert same_output("logits [1, 47, 704] 0.00117 4.02e-05 FAIL", "logits [1, 47, 704] 0.00118 4.03e-05 FAIL")
    assert not same_output("logits [1, 49, 512] 0.00117 FAIL", "logits [1, 47, 704] 0.00117 FAIL")
    assert not same_output("logits 0.00132 FAIL", "logits 0.00117 FAIL")


# Every number in every other section of the README is either produced by the code or the files it names
# (computed in readme_sources) or listed here with where it comes from: a measurement recorded nowhere else, an
# example, a history. A number the README changes or adds fails until it is computed or listed, so no number
# goes stale unseen. 0, 1 and 2 are too common to track.
LISTED = {
    'What "the same as transformers" means': {
        5: "logits of order 5 in the bfloat16 comparison (tests/test_llava.py's docstring)",
        "1%": "pixels where the two resize backends differ, measured on photos (notebook 01 prints its own case)",
        5.17: "the transformers version of the GPU machine, with which 14 image tests fail",
        575: "transformers' count of image tokens without num_additional_image_tokens: 576 - 1",
        4.9e-7: "the largest relative gradient difference from transformers', measured once (see Training)"},
    "Training": {4.9e-7: "the largest relative gradient difference from transformers', measured once",
                 80: "benchmarks/train_step.py's batch: its positions before a labelled token (scored_positions)",
                 677: "the same batch's length",
                 7.9e-5: "tests/test_finetune.py: the largest deviation, measured once",
                 4.8e-7: "the scored positions' largest loss difference in tests/test_training_loss.py, measured once",
                 2.5e-7: "their largest relative gradient difference there, measured once"},
    "Python": {1.1: "the slowest hostile template's CPU time in tests/test_template.py, measured (1.01 s)",
               11: "the largest memory a hostile template took there, MB, measured (10.2 MB)"},
    "Scope": {10: "10**10 steps and the 10 GB string of the two hostile examples",
              "450,000": "the long conversation of tests/test_template.py, characters",
              400: "its messages", 50: "the tools its tool-calling template renders",
              "2,500": "the loop steps that render took, measured (2,479)"},
    "Errors": {"2,000": "tests/test_fuzz.py: 1,400 + 650 hypothesis examples"},
    "The embedded demo checkpoint": {
        5: "conversations of 1 to 5 questions in stage 2 (minillava/demo/conversations.py)",
        10: "the load average during the shipped demo's training (/proc/loadavg, logged once a minute)",
        1.7: "the load average's peak while the demo's training was re-run on the idle machine (logged once a minute)",
        29.1: "that re-run's training minutes (its training_log.json, not shipped)", 43.4: "its CPU-minutes",
        1.5: "the cores it got: 148% in /usr/bin/time -v",
        "87.0%": "an earlier run: 1,200 tower steps (trained wordings)", "70.0%": "the same (withheld wordings)",
        8: "an earlier run: 8 or 9 wordings per kind", 9: "the same", "3,400": "its conversation steps",
        "98.0%": "its trained-wording score", "91.0%": "its withheld-wording score", "88.3%": "its counts of a colour",
        "4,800": "an earlier run with counts asked twice as often", "76.0%": "its withheld-wording score",
        "99.2%": "an earlier run with 13 or 14 wordings", "84.7%": "its withheld-wording score", 13: "the same",
        14: "the same", "99.8%": "the previous shipped demo, trained wordings", "86.3%": "the same, withheld",
        "65.7%": "the same, withheld position questions", "57.9%": "the same, withheld description questions",
        29: "an earlier demo's position errors: 29 in 200 questions", 200: "the same"},
    "Speed": {
        "80%": "transformers' decode, 18.3 tok/s, against the 23.0 tok/s ceiling",
        "104%": "1.3 x transformers' decode against the ceiling",
        744: "CUDA kernels of the image prompt in minillava (torch.profiler, once)", 781: "the same in transformers",
        1e-5: "tests/test_compiled.py's tolerance on a compiled step's logits",
        "3x": "the issue's GPU target for compiled decoding: 3x eager",
        52: "the first time to first token on the GPU, before warm-up, in ms", "1.44x": "an earlier benchmark's figure",
        593: "the 7b-slice benchmark's prompt: 576 image tokens and a short question",
        1.15: "the memory target: peak RSS within 1.15 x file + 0.5 GB (benchmarks/slice7b.py)", 0.5: "the same",
        0.67: "the benchmark's extrapolation to the full 7b: decode tok/s", 31.3: "the same: materialized float32, GB",
        27.5: "the same: the 13b, GB",
        80: "benchmarks/train_step.py's batch: its positions before a labelled token (scored_positions)",
        10: "the scored runs' shortest median step, s (10.3 s)", 18: "their longest (17.4 s)",
        85: "seconds of README tests run beside the fourth scored run (pytest's report)",
        0.56: "an earlier training-step run beside other jobs: its pairs' ratios", 1.32: "the same", 1.11: "the same",
        58: "its shortest step, s", 126: "its longest step, s"},
}


def as_numbers(values):
    """Computed values as numbers() gives them, each matching what it rounds to."""
    return [(str(v), float(v), 0, False) for v in values]


def leaves(obj):
    """Every number in a JSON document, each also in the units the README writes (x1000: s -> ms, GB -> MB;
    /1000: MB -> GB; x100: a fraction as a percentage), and the median of every list."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in leaves(x)]
    if isinstance(obj, list):
        numeric = [x for x in obj if isinstance(x, (int, float)) and not isinstance(x, bool)]
        return [v for x in obj for v in leaves(x)] + (leaves(statistics.median(numeric)) if numeric else [])
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [obj, obj * 1000, obj / 1000, obj * 100, obj / 1e9]
    return []


def anatomies(obj):
    """The anatomies of a decode step (one weight read as float32 and widened) anywhere in a results file."""
    if isinstance(obj, dict):
        return ([obj] if "f32_gemv_gbs" in obj else []) + [a for x in obj.values() for a in anatomies(x)]
    return []


def paired_ratios(results):
    """The medians of minillava / transformers over the pairs of runs taken side by side, per figure."""
    runs = results.get("runs", {})
    if set(runs) != {"minillava", "transformers"}:
        return []
    return [statistics.median(a / b for a, b in zip(runs["minillava"][k], runs["transformers"][k]))
            for k in runs["minillava"]]


def readme_sources():
    """{section title: the numbers (as numbers()) that the code and its data files produce for it}."""
    _, model, _, _ = example_inputs()
    cfg = model.config
    ids = [llama2().token_to_id(t) for t in ("▁", "<0x0A>", "▁upper", "▁▁")]  # the token ids the text quotes
    mean_colour = [int(m * 255) for m in minillava.Processor.from_pretrained(minillava.DEMO).image_config["image_mean"]]
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_minimum = re.search(r'"torch>=([\d.]+)"', pyproject).group(1)
    floors = [float(re.search(r'requires-python = ">=([\d.]+)"', pyproject).group(1)),
              *map(float, re.findall(r'"torch>=([\d.]+)"', pyproject))]  # the package's and the test extra's
    lines = [len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "minillava").rglob("*.py")]
    compare_block = marked("compare-output")

    log = json.loads((minillava.DEMO / "training_log.json").read_text())
    test = log["test"]
    evaluation = [v for split in ("trained", "withheld") for r in test[split].values() for v in r]  # (share, count)
    evaluation += [v for k in ("no answers", "yes/no", "no image", "lower case, no question mark",
                               "image in a later turn") for v in test[k]]
    variations = [conversations.WORD_DROP, conversations.WORD_SWAP, conversations.LEAD_IN, conversations.CASUAL]
    defaults = inspect.signature(evaluate.conversation_set).parameters
    n_convs = [defaults["n_trained"].default + defaults["n_withheld"].default, defaults["n_no_image"].default,
               defaults["n_casual"].default, defaults["n_later"].default]
    curve_steps = [b["step"] - a["step"] for a, b in zip(log["curve"], log["curve"][1:])]
    v, t = cfg.vision_config, cfg.text_config
    demo = [v.image_size, v.patch_size, v.num_patches, v.num_hidden_layers, v.hidden_size, t.num_hidden_layers,
            t.hidden_size, t.num_attention_heads, t.num_key_value_heads, cfg.image_token_index,
            round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            round((minillava.DEMO / "model.safetensors").stat().st_size / 1e6),
            max(len(w) for w in wordings.TRAINED.values()), min(len(w) for w in wordings.TRAINED.values()),
            *{len(w) for w in wordings.WITHHELD.values()}, sum(len(w) for w in wordings.WITHHELD.values()),
            *log["steps"].values(), log["batch_size"],
            log["train_minutes"], log["cpu_minutes"], round(log["cpu_minutes"] / log["train_minutes"], 1),
            *evaluation, *n_convs, *curve_steps, *variations]
    bench = [json.loads(p.read_text()) for p in (ROOT / "benchmarks").glob("results-*.json")]
    speed = [x for b in bench for x in leaves(b) + paired_ratios(b)]
    c7 = config_7b()[0].text_config
    speed += [c7.vocab_size * c7.hidden_size * 4 / 1e9]  # GB: the float32 buffer the lm_head is widened into
    speed += [a["f32_gemv_gbs"] / 4 for b in bench for a in anatomies(b)]  # G float32 values/s from GB/s
    tests_llava = (ROOT / "tests" / "test_llava.py").read_text()
    llava_tolerance = float(re.search(r"^ATOL = ([\d.e-]+)", tests_llava, re.M).group(1))
    bf16_tolerance = float(re.search(r"\(torch\.bfloat16, ([\d.]+)\)", tests_llava).group(1))
    transformers_minimum = float(re.search(r'"transformers>=([\d.]+)', (ROOT / "pyproject.toml").read_text()).group(1))
    tolerances = [t for pair in importlib.import_module("minillava.verification").TOLERANCES.values() for t in pair]
    training_tests = "".join((ROOT / "tests" / f).read_text()
                             for f in ("test_training_loss.py", "test_training_labels.py"))
    training = [float(x) for x in re.findall(r"<= (\d+e-\d+)", training_tests)]  # tolerances
    training += [int(x) for x in re.findall(r"in range\((\d+)\)", training_tests)]  # conversations drawn
    fine_tuning = as_numbers([128 + signal.SIGINT])  # Ctrl-C's exit status
    notebook = nbformat.read(NOTEBOOKS / "08_training.ipynb", as_version=4)  # what the fine-tune printed
    fine_tuning += [n for c in notebook.cells for o in c.get("outputs", []) for n in numbers(o.get("text", ""))]
    template_tests = importlib.import_module("tests.test_template")
    template_limits = [len(template_tests.HOSTILE), limits.MAX_TEXT / 1e6, limits.MAX_SECONDS]
    return {"Set up, run, test": as_numbers([float(torch_minimum)]) + [("3.10", 3.10, 0, False)] + as_numbers(floors),
            "Python": as_numbers(template_limits),
            "Scope": as_numbers(template_limits + ids),
            "Command line": as_numbers([128, 128 + signal.SIGINT]),
            "The modules": as_numbers(lines),
            'What "the same as transformers" means': as_numbers([llava_tolerance, bf16_tolerance, transformers_minimum,
                                                                 *ids, *training]),
            "Training": as_numbers(training) + fine_tuning,
            "Notebooks": dataset_facts(),
            "minillava in your tests": as_numbers([testing.VISION["num_hidden_layers"], testing.VISION["image_size"],
                                                   testing.IMAGE_TOKEN_INDEX, *tolerances]) + numbers(compare_block),
            "Original LLaVA (liuhaotian checkpoints)": as_numbers(ids + mean_colour),
            "The embedded demo checkpoint": as_numbers(demo) + dataset_facts(),
            "Speed": [(str(x), float(x), 0, False) for x in speed]}  # to whatever precision the README rounds


def test_every_number_in_the_readme_is_computed_or_listed():
    sources = readme_sources()
    small = [(str(n), float(n), 0, False) for n in (0, 1, 2)]
    missing = {}
    for title in re.findall(r"^## (.*)$", README, re.M):
        if title == "How LLaVA-1.5 works":
            continue  # test_every_number_of_the_front_door_is_computed
        key = next((k for k in {**sources, **LISTED} if title.startswith(k)), None)  # "Training: what ..."
        listed = [n for text in LISTED.get(key, {}) for n in numbers(str(text))]
        known = sources.get(key, []) + listed + small + real_facts()
        stated = [n[0] for n in numbers(prose(section(title))) if not holds(n, known)]
        if stated:
            missing[title] = stated
    assert not missing, f"numbers in the README that nothing computes and LISTED does not name: {missing}"
