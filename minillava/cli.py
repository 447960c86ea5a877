"""The `minillava` command: ask about images, chat, or dump every stage's activations.

    minillava ask --image photo.jpg "What is in this picture?"
    minillava chat --image photo.jpg
    minillava logits --image photo.jpg "What is this?" --out stages.safetensors
    minillava compare ref.safetensors mine.safetensors --atol 1e-4 --rtol 1e-4
    minillava verify llava-1.5-7b-hf

Without --model, the tiny demo checkpoint that ships inside the package is used.
"""
import argparse
import sys

import torch

from .errors import MinillavaError


def build_parser():
    p = argparse.ArgumentParser(prog="minillava", description="LLaVA-1.5 in plain PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, sampling=True):
        sp.add_argument("--model", default=None, help="llava-hf checkpoint folder (default: the embedded demo)")
        sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
        sp.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float32 on CPU, "
                                                      "the checkpoint's dtype on a GPU)")
        sp.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
        sp.add_argument("--system", default=None, help="a system message put before the first turn")
        if sampling:
            sp.add_argument("--max-new-tokens", type=int, default=256)
            sp.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
            sp.add_argument("--top-k", type=int, default=0)
            sp.add_argument("--top-p", type=float, default=1.0)
            sp.add_argument("--seed", type=int, default=0)

    ask = sub.add_parser("ask", help="answer one question about one or more images, streamed")
    common(ask)
    ask.add_argument("question")
    chat = sub.add_parser("chat", help="an interactive conversation (/image PATH, /reset, /quit)")
    common(chat)
    logits = sub.add_parser("logits", help="write every stage for one prompt to a safetensors file")
    common(logits, sampling=False)
    logits.add_argument("question")
    logits.add_argument("--out", required=True, help="output .safetensors file")
    logits.add_argument("--raw", action="store_true", help="use QUESTION as the exact prompt, no chat template")
    conv = sub.add_parser("convert-original", help="write a llava-hf folder from a liuhaotian checkpoint + CLIP folder")
    conv.add_argument("original")
    conv.add_argument("clip")
    conv.add_argument("out")
    conv.add_argument("--tokenizer", default=None, help="a tokenizer.json to use (the original repos ship only "
                                                        "tokenizer.model): e.g. llava-1.5-7b-hf's")
    cmp = sub.add_parser("compare", help="compare two stage dumps; exit 0 all pass, 1 a stage fails, 2 unusable input")
    cmp.add_argument("ref", help="the reference dump (`minillava logits --out`)")
    cmp.add_argument("other", help="the dump to check, with the same stage names (or --map)")
    cmp.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default: 1e-5)")
    cmp.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default: 1e-5)")
    cmp.add_argument("--map", action="append", default=[], metavar="OTHER_NAME=OUR_NAME",
                     help="OTHER's name for one of our stages; repeat for several")
    cmp.add_argument("--stage", action="append", default=[], help="compare only this stage; repeat for several")
    ver = sub.add_parser("verify", help="check a checkpoint folder, answer a built-in question, compare with "
                                        "transformers when installed; exit status as compare")
    ver.add_argument("folder")
    ver.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")
    ver.add_argument("--dtype", default=None, help="default: the checkpoint's dtype on a GPU, float32 on CPU")
    ver.add_argument("--no-reference", action="store_true", help="do not compare with transformers")
    return p


def load(args):
    from . import load as load_checkpoint
    model, processor = load_checkpoint(args.model, device=args.device, dtype=args.dtype, progress=True)
    return model, processor


def sampling(args):
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, generator=g)


def cmd_ask(args, out):
    from .generation import ChatSession
    model, processor = load(args)
    session = ChatSession(model, processor, system=args.system, **sampling(args))
    for piece in session.ask(args.question, images=args.image):
        out.write(piece)
        out.flush()
    out.write("\n")


def cmd_chat(args, out, inp):
    from .generation import ChatSession
    model, processor = load(args)
    session = ChatSession(model, processor, system=args.system, **sampling(args))
    pending = list(args.image)
    out.write("minillava chat: /image PATH adds an image to your next message, /reset starts over, /quit ends.\n")
    while True:
        out.write("USER: ")
        out.flush()
        line = inp.readline()
        if not line:  # end of input
            break
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            pending = []
            out.write("(conversation cleared)\n")
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                from .images import load_image
                load_image(path)  # fail now, not after the next question
            except MinillavaError as e:
                out.write(f"error: {e}\n")
                continue
            pending.append(path)
            out.write(f"(image {path} will go with your next message)\n")
            continue
        if not line:
            continue
        out.write("ASSISTANT: ")
        try:
            for piece in session.ask(line, images=pending):
                out.write(piece)
                out.flush()
        except MinillavaError as e:
            out.write(f"\nerror: {e}")
        pending = []
        out.write("\n")


def cmd_logits(args):
    from safetensors.torch import save_file

    from .chat import user_message
    from .images import load_image
    model, processor = load(args)
    images = [load_image(p, i) for i, p in enumerate(args.image)]
    if args.raw:
        text = args.question
    else:
        conv = ([{"role": "system", "content": args.system}] if args.system else []) + [user_message(args.question, len(images))]
        text = processor.apply_chat_template(conv, add_generation_prompt=True)
    inputs = processor(text=text, images=images or None)
    stages = model.stages(**inputs)
    stages = {k: v.detach().cpu().contiguous() for k, v in stages.items()}
    save_file(stages, args.out, metadata={"prompt": text, "model": str(args.model or "demo"),
                                          "dtype": str(model.dtype), "images": "\n".join(args.image)})
    for k, v in stages.items():
        print(f"{k:32s} {str(list(v.shape)):24s} {v.dtype}")
    print(f"wrote {args.out}")


def main(argv=None, stdin=None, stdout=None):
    args = build_parser().parse_args(argv)
    out, inp = stdout or sys.stdout, stdin or sys.stdin
    try:
        if args.command == "ask":
            cmd_ask(args, out)
        elif args.command == "chat":
            cmd_chat(args, out, inp)
        elif args.command == "logits":
            cmd_logits(args)
        elif args.command == "convert-original":
            from .original import convert_original
            convert_original(args.original, args.clip, args.out, tokenizer=args.tokenizer)
            print(f"wrote {args.out}")
        elif args.command == "compare":
            from .compare import main as compare_main
            return compare_main(args, out)
        elif args.command == "verify":
            from .verify import main as verify_main
            return verify_main(args, out)
    except MinillavaError as e:
        sys.stderr.write(f"minillava: error: {e}\n")
        return 2
    return 0


def run():  # the console script's entry point
    sys.exit(main())
