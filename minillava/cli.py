"""The `minillava` command: ask about images, chat, dump every stage's activations, compare two dumps,
verify a download, convert an original checkpoint, fine-tune a checkpoint.

    minillava ask --image photo.jpg "What is in this picture?"
    minillava chat --image photo.jpg
    minillava logits --image photo.jpg "What is shown here?" --out stages.safetensors
    minillava compare ref.safetensors mine.safetensors --atol 1e-4 --rtol 1e-4
    minillava verify llava-1.5-7b-hf
    minillava train --data records.json --images images --out tuned

Without --model, the tiny demo checkpoint that ships inside the package is used. This module is what
the command line accepts: the flags, what each value may be (argparse names the flag of a value it
refuses), the help and its examples. What each command does is one function in minillava/commands.py,
`cmd_NAME(args, out, inp)` returning the exit status, registered in `build_parser`. What the library
refuses comes with the library's message. Either way a mistake is one line on stderr and exit status 2
(as argparse does for a wrong flag); Ctrl-C ends any command at once with status 130 (128 + SIGINT,
the shell's convention), without a traceback.
"""
import argparse
import math
import sys

from .commands import cmd_ask, cmd_chat, cmd_compare, cmd_convert_original, cmd_logits, cmd_train, cmd_verify
from .errors import DeviceError, MinillavaError
from .loading import WEIGHTS, resolve_device

EXAMPLE = "minillava/demo/example.png"  # in a clone of the repository
EXAMPLES = {
    "ask": f"""examples:
  minillava ask --image {EXAMPLE} "What color is the circle?"
  minillava ask --image {EXAMPLE} --temperature 0.7 --seed 1 "Describe the image."
  minillava ask --model llava-1.5-7b-hf --device cuda --image photo.jpg "What is in this picture?"
""",
    "chat": f"""examples:
  minillava chat --image {EXAMPLE}
  minillava chat --model llava-1.5-7b-hf --system "Answer in one sentence."
In the chat: /image PATH adds an image to your next message, /reset starts over, /quit ends (so do Ctrl-D and
Ctrl-C).
""",
    "logits": f"""examples:
  minillava logits --image {EXAMPLE} "What is shown here?" --out stages.safetensors
  minillava logits --raw --image {EXAMPLE} "USER: <image>\\nHow many shapes are there? ASSISTANT:" --out s.safetensors
""",
    "compare": f"""examples (exit status 0: every stage passes, 1: a stage fails, 2: unusable input):
  minillava logits --image {EXAMPLE} "What is shown here?" --out ref.safetensors
  minillava compare ref.safetensors mine.safetensors --atol 1e-4 --rtol 1e-4
  minillava compare ref.safetensors mine.safetensors --map their.logits=logits --stage logits
""",
    "verify": """examples (exit status 0: verified, 1: a difference, 2: a broken folder):
  minillava verify llava-1.5-7b-hf
  minillava verify llava-1.5-7b-hf --device cpu --no-reference
""",
    "train": f"""examples (records in LLaVA's JSON format: {{"id", "image", "conversations": [...]}}):
  minillava train --data records.json --images images --out demo-tuned --steps 100 --lr 1e-3
  minillava train --model llava-tiny --stage 1 --data captions.json --images images --out llava-tiny-aligned
  minillava train --model llava-tiny --device cuda --data records.json --images images --out tuned --save-every 50
Then ask the result: minillava ask --model demo-tuned --image {EXAMPLE} "What color is the circle?"
""",
    "convert-original": """example (the folders downloaded as weights.md's "The original release" says):
  minillava convert-original llava-v1.5-7b clip-vit-large-patch14-336 llava-1.5-7b-converted \\
      --tokenizer llava-1.5-7b-hf/tokenizer.json
""",
}


# ---- what a flag accepts: a refused value is reported as "argument --flag: ..." --------------------------

def checked(convert, accept, expected):
    """An argparse type: the text converted by `convert`, refused unless `accept` holds (NaN never does)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {expected}")
        return value
    return parse


POSITIVE_INT = checked(int, lambda n: n >= 1, "an integer >= 1")
NATURAL_INT = checked(int, lambda n: n >= 0, "an integer >= 0")
SEED = checked(int, lambda n: 0 <= n < 2**64, "an integer from 0 to 2**64 - 1")
POSITIVE = checked(float, lambda x: 0 < x < math.inf, "a finite number > 0")
NON_NEGATIVE = checked(float, lambda x: 0 <= x < math.inf, "a finite number >= 0")
FRACTION = checked(float, lambda x: 0 <= x <= 1, "a number from 0 to 1")
PROBABILITY = checked(float, lambda x: 0 < x <= 1, "a number in (0, 1]")


def device_flag(text):
    """--device, checked before anything is loaded: a name torch knows, on this machine."""
    try:
        resolve_device(text)
    except DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def stage_pair(text):
    """--map OTHER_NAME=OUR_NAME -> (OTHER_NAME, OUR_NAME)."""
    other, equals, ours = text.partition("=")
    if not (other and equals and ours) or "=" in ours:
        raise argparse.ArgumentTypeError(f"{text!r} is not OTHER_NAME=OUR_NAME (e.g. model.lm_head.out=logits)")
    return other, ours


# ---- the parser ------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (and where the help is) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its meaning (spelled out in the help where it is None); examples kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == [] or "(default" in action.help:
            return action.help
        return super()._get_help_string(action)


def model_options():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument_group("model").add_argument(
        "--model", metavar="FOLDER", help="a llava-hf checkpoint folder, downloaded as weights.md says "
                                          "(default: the demo checkpoint inside the package)")
    return p


def device_options(device):
    """--device, --dtype, --weights, for every command that loads a checkpoint. `device` is the default:
    "cpu" (float32 there: the exact reference), or None for verify, which checks a download where it will
    run: CUDA when there is a GPU."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device")
    where = "(default: cpu)" if device else "(default: cuda when available, else cpu: the download is checked " \
                                            "where it will run)"
    g.add_argument("--device", type=device_flag, default=device, help=f"where to run: cpu, cuda, cuda:1, mps {where}")
    g.add_argument("--dtype", help="what the model computes in: float32, float16 or bfloat16 (default: float32 "
                                   "on cpu, the checkpoint's own dtype on a GPU)")
    g.add_argument("--weights", default="stored", choices=WEIGHTS,
                   help="how float16/bfloat16 weights are held when computing in float32. stored: as in the file, "
                        "each widened to float32 as it is used: the same logits in the memory of the file. "
                        "materialized: all converted to float32 when loading: twice the memory")
    return p


def prompt_options():
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("prompt")
    g.add_argument("--image", metavar="FILE", action="append", help="an image file; repeat the flag for several. "
                   "Each goes before the question as one <image> marker (default: no image)")
    g.add_argument("--system", metavar="TEXT", help="a system message before the first turn (default: none)")
    return p


def sampling_options():
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=POSITIVE_INT, default=256, metavar="N",
                   help="the longest answer, in tokens")
    g.add_argument("--temperature", type=NON_NEGATIVE, default=0.0, metavar="T",
                   help="0 is greedy (always the likeliest token); above 0 samples, more varied as it grows")
    g.add_argument("--top-k", type=NATURAL_INT, default=0, metavar="K",
                   help="sample among the K likeliest tokens only (0: all)")
    g.add_argument("--top-p", type=PROBABILITY, default=1.0, metavar="P",
                   help="sample among the likeliest tokens whose probabilities add up to P (1: all)")
    g.add_argument("--seed", type=SEED, default=0, help="the random seed of sampling (the same seed, the same answer)")
    g.add_argument("--compile", action="store_true", help="run each one-token step through torch.compile (CUDA "
                   "graphs on a GPU): the first answer waits for the compile, its time is printed on stderr; "
                   "needs --weights materialized for float16/bfloat16 files computed in float32 (default: off)")
    return p


def build_parser():
    p = Parser(prog="minillava", description="LLaVA-1.5 in plain PyTorch: ask a checkpoint about images.",
               epilog="Run minillava COMMAND --help for a command's flags and examples.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    model, device, prompt, sampling = model_options(), device_options("cpu"), prompt_options(), sampling_options()

    def command(name, run, parents, help):
        c = sub.add_parser(name, parents=parents, help=help, description=help, epilog=EXAMPLES[name],
                           formatter_class=Help)
        c.set_defaults(run=run)
        return c

    ask = command("ask", cmd_ask, [model, device, prompt, sampling],
                  "answer one question about one or more images, streamed")
    ask.add_argument("question", help="the question, without <image> markers (--image places them)")

    command("chat", cmd_chat, [model, device, prompt, sampling], "an interactive conversation about images")

    logits = command("logits", cmd_logits, [model, device, prompt],
                     "write every stage's activations for one prompt to a safetensors file")
    logits.add_argument("question", help="the question (with --raw: the whole prompt)")
    logits.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write (required)")
    logits.add_argument("--raw", action="store_true", help="QUESTION is the exact prompt, with its own <image> "
                        "markers, one per --image; no chat template (default: off)")

    cmp = command("compare", cmd_compare, [], "compare two stage dumps stage by stage, and name the first that drifts")
    cmp.add_argument("ref", help="the reference dump (minillava logits --out)")
    cmp.add_argument("other", help="the dump to check, with the same stage names (or --map)")
    cmp.add_argument("--atol", type=NON_NEGATIVE, default=1e-5, help="absolute tolerance")
    cmp.add_argument("--rtol", type=NON_NEGATIVE, default=1e-5, help="relative tolerance")
    cmp.add_argument("--map", type=stage_pair, action="append", default=[], metavar="OTHER_NAME=OUR_NAME",
                     help="OTHER's name for one of our stages; repeat for several (default: the same names)")
    cmp.add_argument("--stage", action="append", default=[], metavar="NAME",
                     help="compare only this stage; repeat for several (default: every stage of REF)")

    ver = command("verify", cmd_verify, [device_options(None)],
                  "check a checkpoint folder, answer a built-in question, compare with transformers when installed")
    ver.add_argument("folder", help="the llava-hf checkpoint folder to check")
    ver.add_argument("--no-reference", action="store_true",
                     help="do not compare with transformers (default: compare when it is installed)")

    conv = command("convert-original", cmd_convert_original, [],
                   "write a llava-hf folder from an original liuhaotian checkpoint")
    conv.add_argument("original", help="the liuhaotian/llava-v1.5-* folder (pytorch_model-*.bin, config.json)")
    conv.add_argument("clip", help="the openai/clip-vit-large-patch14-336 folder (its vision tower)")
    conv.add_argument("out", help="the folder to write (created; files in it are overwritten)")
    conv.add_argument("--tokenizer", metavar="FILE", help="the tokenizer.json to use, e.g. llava-1.5-7b-hf's "
                      "(default: ORIGINAL/tokenizer.json; the original repositories ship only tokenizer.model)")
    conv.add_argument("--dtype", help="the dtype to write: float16, bfloat16 or float32 (default: the original's, "
                                      "float16)")
    train_options(command, model)
    return p


def train_options(command, model):
    t = command("train", cmd_train, [model], "fine-tune a checkpoint on LLaVA instruction records (LLaVA-1.5's "
                                             "recipe) and write a llava-hf folder")
    t.add_argument("--data", dest="records", required=True, metavar="FILE", help="the records: a JSON list as LLaVA's "
                   "llava_v1_5_mix665k.json, or a .jsonl file of one record a line (required)")
    t.add_argument("--images", metavar="DIR", help="the folder the records' image paths are relative to "
                                                   "(default: the current folder)")
    t.add_argument("--out", required=True, metavar="FOLDER", help="the folder to write the fine-tuned checkpoint "
                                                                  "to: new or empty (required)")
    t.add_argument("--stage", type=int, default=2, choices=[1, 2], help="1: train the projector (feature "
                   "alignment); 2: the projector and the decoder (instruction tuning). The vision tower stays frozen")
    t.add_argument("--format", choices=["plain", "vicuna_v1", "template"], help="how records become tokens and "
                   "labels: plain (stage 1's captions), vicuna_v1 (stage 2's prompt, the original's), template "
                   "(the folder's chat template, labelled as transformers' assistant_masks) (default: plain for "
                   "stage 1, vicuna_v1 for stage 2)")
    g = t.add_argument_group("schedule (LLaVA-1.5's: AdamW, warm-up then cosine to 0, gradients clipped to 1.0)")
    g.add_argument("--steps", type=POSITIVE_INT, metavar="N", help="optimizer steps (default: one pass over the "
                                                                   "records)")
    g.add_argument("--batch-size", type=POSITIVE_INT, default=16, metavar="N", help="records per step")
    g.add_argument("--lr", type=POSITIVE, metavar="LR", help="the peak learning rate (default: 1e-3 for stage 1, "
                                                             "2e-5 for stage 2, as LLaVA-1.5)")
    g.add_argument("--warmup-ratio", type=FRACTION, default=0.03, metavar="R", help="the share of the steps over "
                                                                                    "which the rate rises from 0")
    g.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.0, metavar="W", help="AdamW's weight decay")
    g.add_argument("--max-length", type=POSITIVE_INT, metavar="N", help="cut each record to N tokens, never inside "
                                                                        "an image (default: no limit)")
    g.add_argument("--seed", type=SEED, default=0, help="the order the records are taken in")
    r = t.add_argument_group("run")
    r.add_argument("--device", type=device_flag, help="where to train: cpu, cuda, cuda:1, mps (default: cuda when "
                                                      "available, else cpu). The weights are float32")
    r.add_argument("--save-every", type=POSITIVE_INT, metavar="N", help="write the folder every N steps too; "
                   "Ctrl-C keeps the last one written (default: only after the last step)")
    r.add_argument("--log-every", type=POSITIVE_INT, default=10, metavar="N", help="a log line every N steps when "
                                                                                   "the output is not a terminal")


def main(argv=None, stdin=None, stdout=None):
    """Run one command; return its exit status (0; 1 where compare or verify find a difference; 2 for a
    mistake; 130 for Ctrl-C)."""
    out, inp = stdout or sys.stdout, stdin or sys.stdin
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a wrong flag (2, already reported in one line)
        return e.code
    try:
        return args.run(args, out, inp)
    except MinillavaError as e:
        clear = "\r\033[K" if sys.stderr.isatty() else ""  # a progress bar may be on the line
        sys.stderr.write(f"{clear}minillava: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        out.write("\n")
        return 130


def run():  # the console script's entry point
    sys.exit(main())
