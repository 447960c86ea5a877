"""What each `minillava` command does: one function per command, `cmd_NAME(args, out, inp)`, given the
parsed flags (minillava/cli.py checks them), the output and input streams, and returning the exit
status. A mistake is raised as a MinillavaError, which cli.main reports in one line.
"""
import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .chat import system_message, user_message
from .comparison import compare
from .compiled import compile_seconds
from .errors import MinillavaError, PromptError
from .finetune import FORMAT, LR, read_records, saved_step, train
from .images import load_image
from .loading import DEMO, load, resolve_device
from .original import convert_original
from .session import ChatSession
from .verification import verify

CHAT_USAGE = "commands: /image PATH (an image for your next message), /reset (start over), /quit"


def load_checkpoint(args):
    return load(args.model, device=args.device, dtype=args.dtype, weights=args.weights, progress=True)


def start_session(args):
    model, processor = load_checkpoint(args)
    return ChatSession(model, processor, system=args.system, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       generator=torch.Generator(device="cpu").manual_seed(args.seed), compile=args.compile)


def report_compile(chat, reported):
    """--compile: the time of each compile the last answer waited for, on stderr (the answer is stdout)."""
    for (batch, length), seconds in compile_seconds(chat.model).items():
        if (batch, length) not in reported:
            reported.add((batch, length))
            sys.stderr.write(f"minillava: compiled the decode step (batch {batch}, cache of {length} positions): "
                             f"its first step took {seconds:.1f} s\n")


def check_question(text):
    if "<image>" in text:
        raise PromptError("the question contains <image>: the command puts one <image> marker per --image before "
                          "the question itself; leave it out (or write the whole prompt with minillava logits --raw)")


def write_answer(pieces, out):
    """Each piece of an answer as soon as it is decoded, then the end of the line."""
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")


def cmd_ask(args, out, inp):
    check_question(args.question)
    chat = start_session(args)
    write_answer(chat.ask(args.question, images=args.image or []), out)
    report_compile(chat, set())
    return 0


def cmd_chat(args, out, inp):
    chat, compiled_shapes = start_session(args), set()
    pending = list(args.image or [])
    out.write(f"minillava chat ({CHAT_USAGE}; Ctrl-D or Ctrl-C also ends)\n")
    while True:
        out.write("USER: ")
        out.flush()
        line = inp.readline()
        if not line:  # end of input
            out.write("\n")
            return 0
        line = line.strip()
        command, _, path = line.partition(" ")
        path = path.strip()
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            chat.reset()
            pending = []
            out.write("(conversation cleared)\n")
        elif command == "/image" and not path:
            out.write("usage: /image PATH (an image file for your next message)\n")
        elif command == "/image":
            try:
                load_image(path)  # fail now, not after the next question
                pending.append(path)
                out.write(f"(image {path} will go with your next message)\n")
            except MinillavaError as e:
                out.write(f"error: {e}\n")
        elif command.startswith("/"):
            out.write(f"unknown command {command}; {CHAT_USAGE}\n")
        elif line:
            try:
                check_question(line)
                answer = chat.ask(line, images=pending)  # every check runs here, before the answer starts
            except MinillavaError as e:
                out.write(f"error: {e}\n")
                continue
            pending = []
            out.write("ASSISTANT: ")
            write_answer(answer, out)
            report_compile(chat, compiled_shapes)


def cmd_logits(args, out, inp):
    path = Path(args.out)
    if path.is_dir():
        raise PromptError(f"--out {path}: a folder; give a file name")
    if not path.parent.is_dir():
        raise PromptError(f"--out {path}: the folder {path.parent} does not exist")
    images = [load_image(p, i) for i, p in enumerate(args.image or [])]
    if not args.raw:
        check_question(args.question)
    model, processor = load_checkpoint(args)
    if args.raw:
        text = args.question
    else:
        conversation = ([system_message(args.system)] if args.system else []) + [
            user_message(args.question, len(images))]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=text, images=images or None)
    stages = {k: v.detach().cpu().contiguous() for k, v in model.stages(**inputs).items()}
    metadata = {"prompt": text, "model": str(args.model or "demo"), "dtype": str(model.dtype),
                "images": "\n".join(args.image or [])}
    try:
        save_file(stages, str(path), metadata=metadata)
    except OSError as e:
        raise PromptError(f"--out {path}: cannot write it ({e.strerror or e})") from None
    for k, v in stages.items():
        out.write(f"{k:32s} {str(list(v.shape)):24s} {v.dtype}\n")
    out.write(f"wrote {path}\n")
    return 0


def cmd_compare(args, out, inp):
    report = compare(args.ref, args.other, atol=args.atol, rtol=args.rtol, mapping=dict(args.map),
                     stages=args.stage or None)
    out.write(f"{report}\n")
    return report.exit_status


def cmd_verify(args, out, inp):
    if not args.no_reference and not sys.stderr.isatty() and importlib.util.find_spec("transformers"):
        # transformers' loading bar, like minillava's, only on a terminal (imported here: it is optional)
        from transformers.utils import logging

        logging.disable_progress_bar()
    report = verify(args.folder, device=args.device, dtype=args.dtype, reference=not args.no_reference,
                    weights=args.weights)
    out.write(f"{report}\n")
    return report.exit_status


def cmd_convert_original(args, out, inp):
    convert_original(args.original, args.clip, args.out, tokenizer=args.tokenizer, dtype=args.dtype)
    out.write(f"wrote {args.out}\n")
    return 0


def cmd_train(args, out, inp):
    """Fine-tune with minillava.finetune.train; show its progress; on Ctrl-C say which step the folder holds."""
    records = read_records(args.records)
    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load(args.model, device=device, dtype="float32", weights="materialized", progress=True)
    lr = args.lr or LR[args.stage]
    run = train(model, processor, records, stage=args.stage, format=args.format, steps=args.steps, lr=lr,
                batch_size=args.batch_size, image_folder=args.images, max_length=args.max_length,
                warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, seed=args.seed,
                out=args.out, source=args.model or DEMO, save_every=args.save_every)  # checks all, trains nothing
    out.write(f"training {args.model or 'the demo'} on {len(records):,} records: stage {args.stage}, format "
              f"{args.format or FORMAT[args.stage]}, batches of {args.batch_size}, peak lr {lr:g}, on {device}\n")
    terminal, step, losses = out.isatty(), 0, []
    try:
        for log in run:
            step, steps = log["step"], log["steps"]
            losses.append(log["loss"])
            if terminal:  # a bar redrawn in place
                done = 30 * step // steps
                out.write(f"\rstep {step}/{steps} [{'#' * done}{'.' * (30 - done)}] loss {log['loss']:.4f} "
                          f"lr {log['lr']:.2e} {log['seconds']:.2f} s/step")
            elif step % args.log_every == 0 or step == steps:  # a pipe, a log file, CI: a line now and then
                out.write(f"step {step}/{steps}  loss {sum(losses) / len(losses):.4f} (mean of {len(losses)})  "
                          f"lr {log['lr']:.3g}  grad norm {log['grad_norm']:.3g}  {log['seconds']:.2f} s/step\n")
                losses = []
            out.flush()
    except KeyboardInterrupt:
        saved = saved_step(args.out)
        kept = f"{args.out} holds step {saved}" if saved else f"nothing was written to {args.out} yet"
        out.write(f"\nstopped after step {step}; {kept}\n")
        return 130
    out.write(("\n" if terminal else "") + f"wrote {args.out} (step {step})\n")
    return 0
