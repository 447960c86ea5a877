"""The `minillava` command: ask about images, chat, dump every stage's activations, convert an original checkpoint.

    minillava ask --image photo.jpg "What is in this picture?"
    minillava chat --image photo.jpg
    minillava logits --image photo.jpg "What is shown here?" --out stages.safetensors
    minillava compare ref.safetensors mine.safetensors --atol 1e-4 --rtol 1e-4
    minillava verify llava-1.5-7b-hf

Without --model, the tiny demo checkpoint that ships inside the package is used. A mistake is reported in
one line on stderr with exit status 2 (as argparse does for a wrong flag); Ctrl-C ends any command at once
with status 130 (128 + SIGINT, the shell's convention), without a traceback.
"""
import argparse
import sys
from pathlib import Path

import torch

from .errors import MinillavaError, PromptError

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
    "convert-original": """example (the folders downloaded as weights.md's "The original release" says):
  minillava convert-original llava-v1.5-7b clip-vit-large-patch14-336 llava-1.5-7b-converted \\
      --tokenizer llava-1.5-7b-hf/tokenizer.json
""",
}
# library messages speak Python; the command line has flags for the same things
CLI_WORDS = [("device='cpu'", "--device cpu"), ("dtype='float16'", "--dtype float16"), ("max_new_tokens", "--max-new-tokens"),
             ("top_k", "--top-k"), ("top_p", "--top-p"), ("reset() the session", "/reset to start over")]
CHAT_USAGE = "commands: /image PATH (an image for your next message), /reset (start over), /quit"


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
    """--model, --device, --dtype, --weights: taken by every command that loads a checkpoint."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="FOLDER", help="a llava-hf checkpoint folder, downloaded as weights.md says "
                                                     "(default: the demo checkpoint inside the package)")
    g.add_argument("--device", default="cpu", help="where to run: cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", help="float32, float16 or bfloat16 (default: float32 on cpu, the checkpoint's own "
                                   "dtype on a GPU)")
    g.add_argument("--weights", default="stored", choices=["stored", "materialized"], help="stored: float16/bfloat16 "
                   "weights kept as in the file under float32, exact in half the memory; materialized (default: stored)")
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
    g.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="the longest answer, in tokens")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="0 is greedy (always the likeliest token); above 0 samples, more varied as it grows")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest tokens only (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="sample among the likeliest tokens whose probabilities add up to P (1: all)")
    g.add_argument("--seed", type=int, default=0, help="the random seed of sampling (the same seed, the same answer)")
    return p


def build_parser():
    p = Parser(prog="minillava", description="LLaVA-1.5 in plain PyTorch: ask a checkpoint about images.",
               epilog="Run minillava COMMAND --help for a command's flags and examples.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    model, prompt, sampling = model_options(), prompt_options(), sampling_options()

    def command(name, parents, help):
        return sub.add_parser(name, parents=parents, help=help, description=help, epilog=EXAMPLES[name],
                              formatter_class=Help)
    ask = command("ask", [model, prompt, sampling], "answer one question about one or more images, streamed")
    ask.add_argument("question", help="the question, without <image> markers (--image places them)")
    command("chat", [model, prompt, sampling], "an interactive conversation about images")
    logits = command("logits", [model, prompt], "write every stage's activations for one prompt to a safetensors file")
    logits.add_argument("question", help="the question (with --raw: the whole prompt)")
    logits.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write (required)")
    logits.add_argument("--raw", action="store_true", help="QUESTION is the exact prompt, with its own <image> "
                        "markers, one per --image; no chat template (default: off)")
    conv = command("convert-original", [], "write a llava-hf folder from an original liuhaotian checkpoint")
    conv.add_argument("original", help="the liuhaotian/llava-v1.5-* folder (pytorch_model-*.bin, config.json)")
    conv.add_argument("clip", help="the openai/clip-vit-large-patch14-336 folder (its vision tower)")
    conv.add_argument("out", help="the folder to write (created; files in it are overwritten)")
    conv.add_argument("--tokenizer", metavar="FILE", help="the tokenizer.json to use, e.g. llava-1.5-7b-hf's (default: "
                      "ORIGINAL/tokenizer.json; the original repositories ship only tokenizer.model)")
    conv.add_argument("--dtype", help="float16, bfloat16 or float32 (default: the original's, float16)")
    cmp = command("compare", [], "compare two stage dumps stage by stage, and name the first that drifts")
    cmp.add_argument("ref", help="the reference dump (minillava logits --out)")
    cmp.add_argument("other", help="the dump to check, with the same stage names (or --map)")
    cmp.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance")
    cmp.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance")
    cmp.add_argument("--map", action="append", default=[], metavar="OTHER_NAME=OUR_NAME",
                     help="OTHER's name for one of our stages; repeat for several (default: the same names)")
    cmp.add_argument("--stage", action="append", default=[], metavar="NAME",
                     help="compare only this stage; repeat for several (default: every stage of REF)")
    ver = command("verify", [], "check a checkpoint folder, answer a built-in question, compare with transformers "
                                "when installed")
    ver.add_argument("folder", help="the llava-hf checkpoint folder to check")
    ver.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    ver.add_argument("--dtype", help="float32, float16 or bfloat16 (default: the checkpoint's dtype on a GPU, "
                                     "float32 on cpu)")
    ver.add_argument("--weights", default="stored", choices=["stored", "materialized"], help="as ask's (default: stored)")
    ver.add_argument("--no-reference", action="store_true", help="do not compare with transformers (default: compare "
                                                                 "when it is installed)")
    return p


def load(args):
    from .loading import load as load_checkpoint
    return load_checkpoint(args.model, device=args.device, dtype=args.dtype, weights=args.weights, progress=True)


def session(args):
    from .session import ChatSession
    model, processor = load(args)
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    return ChatSession(model, processor, system=args.system, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=g)


def check_question(text):
    if "<image>" in text:
        raise PromptError("the question contains <image>: the command puts one <image> marker per --image before "
                          "the question itself; leave it out (or write the whole prompt with minillava logits --raw)")


def cmd_ask(args, out):
    check_question(args.question)
    chat = session(args)
    for piece in chat.ask(args.question, images=args.image or []):
        out.write(piece)
        out.flush()
    out.write("\n")


def cmd_chat(args, out, inp):
    from .images import load_image
    chat = session(args)
    pending = list(args.image or [])
    out.write(f"minillava chat ({CHAT_USAGE}; Ctrl-D or Ctrl-C also ends)\n")
    while True:
        out.write("USER: ")
        out.flush()
        line = inp.readline()
        if not line:  # end of input
            out.write("\n")
            break
        line = line.strip()
        command, _, rest = line.partition(" ")
        if command in ("/quit", "/exit"):
            break
        if command == "/reset":
            chat.reset()
            pending = []
            out.write("(conversation cleared)\n")
        elif command == "/image" and not rest.strip():
            out.write("usage: /image PATH (an image file for your next message)\n")
        elif command == "/image":
            try:
                load_image(rest.strip())  # fail now, not after the next question
                pending.append(rest.strip())
                out.write(f"(image {rest.strip()} will go with your next message)\n")
            except MinillavaError as e:
                out.write(f"error: {cli_message(e)}\n")
        elif command.startswith("/"):
            out.write(f"unknown command {command}; {CHAT_USAGE}\n")
        elif line:
            out.write("ASSISTANT: ")
            try:
                check_question(line)
                for piece in chat.ask(line, images=pending):
                    out.write(piece)
                    out.flush()
                pending = []
            except MinillavaError as e:
                out.write(f"\nerror: {cli_message(e)}")
            out.write("\n")


def cmd_logits(args, out):
    from safetensors.torch import save_file

    from .chat import system_message, user_message
    from .images import load_image
    path = Path(args.out)
    if not path.parent.is_dir() or path.is_dir():
        raise PromptError(f"--out {path}: " + ("a folder; give a file name" if path.is_dir() else
                                              f"the folder {path.parent} does not exist"))
    images = [load_image(p, i) for i, p in enumerate(args.image or [])]
    if not args.raw:
        check_question(args.question)
    model, processor = load(args)
    if args.raw:
        text = args.question
    else:
        conv = ([system_message(args.system)] if args.system else []) + [user_message(args.question, len(images))]
        text = processor.apply_chat_template(conv, add_generation_prompt=True)
    inputs = processor(text=text, images=images or None)
    stages = {k: v.detach().cpu().contiguous() for k, v in model.stages(**inputs).items()}
    try:
        save_file(stages, str(path), metadata={"prompt": text, "model": str(args.model or "demo"),
                                               "dtype": str(model.dtype), "images": "\n".join(args.image or [])})
    except OSError as e:
        raise PromptError(f"--out {path}: cannot write it ({e.strerror or e})") from None
    for k, v in stages.items():
        out.write(f"{k:32s} {str(list(v.shape)):24s} {v.dtype}\n")
    out.write(f"wrote {path}\n")


def cli_message(error):
    message = str(error)
    for python, flag in CLI_WORDS:
        message = message.replace(python, flag)
    return message


def main(argv=None, stdin=None, stdout=None):
    """Run one command; returns the exit status (0; 1 where compare or verify find a difference; 2 for a mistake;
    130 for Ctrl-C)."""
    out, inp = stdout or sys.stdout, stdin or sys.stdin
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a wrong flag (2, already reported in one line)
        return e.code
    try:
        if args.command == "ask":
            cmd_ask(args, out)
        elif args.command == "chat":
            cmd_chat(args, out, inp)
        elif args.command == "logits":
            cmd_logits(args, out)
        elif args.command == "convert-original":
            from .original import convert_original
            convert_original(args.original, args.clip, args.out, tokenizer=args.tokenizer, dtype=args.dtype)
            out.write(f"wrote {args.out}\n")
        elif args.command == "compare":
            from .compare import main as compare_main
            return compare_main(args, out)
        elif args.command == "verify":
            from .verify import main as verify_main
            return verify_main(args, out)
    except MinillavaError as e:
        clear = "\r\033[K" if sys.stderr.isatty() else ""  # a progress bar may be on the line
        sys.stderr.write(f"{clear}minillava: error: {cli_message(e)}\n")
        return 2
    except KeyboardInterrupt:
        out.write("\n")
        return 130
    return 0


def run():  # the console script's entry point
    sys.exit(main())
