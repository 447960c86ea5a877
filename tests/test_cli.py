"""The `minillava` command as a new user meets it, on the embedded demo: every mistake answered in one line with
exit status 2 and no traceback, Ctrl-C a clean exit (130), --help with examples and every flag's default, the
progress bar on terminals only. (Answers equal to the Python API: tests/test_session.py.)"""
import io
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minillava
from minillava import cli
from tests.helpers import HANG_S

ROOT = Path(__file__).parent.parent

EXAMPLE = str(minillava.DEMO / "example.png")
QUESTIONS = ["What color is the circle?", "What is in this picture?", "Describe the image.",
             "How many shapes are there?", "What is shown here?"]


def run(*argv, stdin=""):
    """cli.main in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    real, sys.stderr = sys.stderr, err
    try:
        code = cli.main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    finally:
        sys.stderr = real
    return code, out.getvalue(), err.getvalue()


def one_line_error(code, err, *words):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("minillava") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_ask_the_demo():
    for question in QUESTIONS:
        code, out, err = run("ask", "--image", EXAMPLE, question)
        assert code == 0 and out.strip() and not err, (question, out, err)
    assert run("ask", "--image", EXAMPLE, QUESTIONS[0])[1] == "green\n"


@pytest.mark.parametrize("argv, words", [
    (["ask", "--device", "cuda", "Hi"], ["argument --device", "CUDA is not available"]),
    (["ask", "--max-new-tokens", "1000000", "--image", EXAMPLE, "What is shown here?"],
     ["max_new_tokens 1000000", "is the most that fits"]),
    (["ask", "--image", EXAMPLE, "<image> What is shown here?"],
     ["contains <image>", "one <image> marker per --image"]),
    (["ask", "--image", str(minillava.DEMO), "Hi"], ["a folder; expected an image file"]),
    (["ask", "--image", "https://example.com/cat.png", "Hi"], ["a URL", "download it first"]),
    (["ask", "--model", "llava-hf/llava-1.5-7b-hf", "Hi"],
     ["names are not downloaded", "hf download llava-hf/llava-1.5-7b-hf --local-dir llava-1.5-7b-hf", "weights.md"]),
    (["ask", "--model", "/no/such/folder", "Hi"], ["no such checkpoint folder"]),
    (["ask", "--temperature", "-1", "Hi"], ["argument --temperature: -1 is not a finite number >= 0"]),
    (["ask", "--temperature", "nan", "Hi"], ["argument --temperature: nan is not"]),
    (["ask", "--temperature", "inf", "Hi"], ["argument --temperature: inf is not"]),
    (["ask", "--top-p", "0", "Hi"], ["argument --top-p: 0 is not a number in (0, 1]"]),
    (["ask", "--top-p", "1.5", "Hi"], ["argument --top-p: 1.5"]), (["ask", "--top-p", "nan", "Hi"], ["--top-p: nan"]),
    (["ask", "--top-k", "-1", "Hi"], ["argument --top-k: -1 is not an integer >= 0"]),
    (["ask", "--max-new-tokens", "0", "Hi"], ["argument --max-new-tokens: 0 is not an integer >= 1"]),
    (["ask", "--seed", "-1", "Hi"], ["argument --seed: -1"]), (["ask", "--seed", str(2**64), "Hi"], ["--seed"]),
    (["chat", "--max-new-tokens", "2.5"], ["argument --max-new-tokens: '2.5' is not an integer"]),
    (["compare", "a", "b", "--atol", "-1"], ["argument --atol: -1 is not a finite number >= 0"]),
    (["compare", "a", "b", "--rtol", "nan"], ["argument --rtol: nan"]),
    (["compare", "a", "b", "--map", "x=y=z"], ["argument --map: 'x=y=z' is not OTHER_NAME=OUR_NAME"]),
    (["verify", "folder", "--device", "gpu"], ["argument --device", "'gpu'"]),
    (["ask", "--dtype", "int8", "Hi"], ["dtype 'int8'"]),
    (["logits", "Hi", "--out", "/missing/dir/x.safetensors"], ["--out /missing/dir/x.safetensors", "does not exist"]),
    (["logits", "--raw", "--image", EXAMPLE, "USER: <image><image> Hi ASSISTANT:", "--out", "x.safetensors"],
     ["2 <image> marker(s) but 1 image(s)"]),
    (["ask"], ["required: question", "minillava ask --help"]),
    (["ask", "--top-k", "many", "Hi"], ["argument --top-k: 'many' is not an integer >= 0"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["convert-original", "nowhere", "nowhere", "out"], ["nowhere"]),
])
def test_mistakes_are_one_line_with_status_2(argv, words, tmp_path, monkeypatch):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    one_line_error(*run(*argv)[::2], *words)


def test_the_largest_max_new_tokens_named_does_fit():
    ask = ["ask", "--image", EXAMPLE, "What is shown here?", "--max-new-tokens"]
    err = run(*ask, "1000000")[2]
    most = int(err.split("max_new_tokens ")[-1].split()[0])
    assert run(*ask, str(most))[0] == 0
    assert f"max_new_tokens {most} is the most" in run(*ask, str(most + 1))[2]


def test_logits_to_a_folder_or_an_unwritable_place(tmp_path):
    one_line_error(*run("logits", "Hi", "--out", str(tmp_path))[::2], "a folder; give a file name")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(*run("logits", "Hi", "--out", str(locked / "x.safetensors"))[::2], "cannot write")


def test_chat_commands():
    script = f"/image\n/imag {EXAMPLE}\n/image {EXAMPLE}\n{QUESTIONS[0]}\n/image /no/such.png\n/help\n" \
             f"<image> hi\n/reset\n{QUESTIONS[3]}\n/quit\nnever read\n"
    code, out, err = run("chat", stdin=script)
    assert code == 0 and not err, err
    lines = out.splitlines()
    assert "usage: /image PATH (an image file for your next message)" in lines[1]
    assert "unknown command /imag; commands: /image PATH" in lines[2]
    assert "unknown command /help" in out and "/no/such.png): file not found" in out
    assert "ASSISTANT: green" in out and "USER: error: the question contains <image>" in out
    assert "(conversation cleared)" in out
    assert out.count("ASSISTANT: ") == 2  # the two questions; never a refused line, never the /commands


def test_chat_ctrl_d_and_ctrl_c():
    code, out, _ = run("chat", stdin="")  # Ctrl-D: end of input
    assert code == 0 and out.endswith("USER: \n")

    class CtrlC(io.StringIO):
        def readline(self):
            raise KeyboardInterrupt
    out = io.StringIO()
    assert cli.main(["chat"], stdin=CtrlC(), stdout=out) == 130
    assert out.getvalue().endswith("USER: \n")


def test_ctrl_c_in_a_real_chat_process():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "minillava", "chat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().startswith("minillava chat")
        assert p.stdout.read(6) == "USER: "  # waiting for input
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=HANG_S)
    finally:
        p.kill()
    assert p.returncode == 130 and "Traceback" not in err and not err, err


@pytest.mark.parametrize("command", ["ask", "chat", "logits", "convert-original", "compare", "verify", "train"])
def test_help_has_examples_meanings_and_defaults(command):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    text = sub.format_help()
    assert "example" in text and f"minillava {command}" in text.split("example", 1)[1]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.dest} has no help"
        shown = cli.Help(prog="minillava")._get_help_string(action)  # what --help prints for the flag
        if action.option_strings and not action.required:
            assert "(default: " in shown, f"{command} {action.dest}: no default given"
        assert " ".join(shown.split()[:3]) in " ".join(text.split())
    assert run(command, "--help")[0] == 0
    assert "minillava COMMAND --help" in parser.format_help()


def example_commands():
    """The command lines of every --help's examples (backslash continuations joined)."""
    for command, text in cli.EXAMPLES.items():
        for line in text.replace("\\\n", "").splitlines():
            if line.strip().startswith("minillava "):
                yield command, shlex.split(line)[1:]


def test_help_examples_run(tmp_path, monkeypatch):
    # on stand-ins: the demo as llava-1.5-7b-hf, its example image as photo.jpg, in a folder holding minillava/
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llava-1.5-7b-hf").symlink_to(minillava.DEMO)
    (tmp_path / "minillava").symlink_to(minillava.DEMO.parent)
    (tmp_path / "photo.jpg").symlink_to(EXAMPLE)
    ran = 0
    for command, argv in example_commands():
        if command == "train":  # on records and images of its own: tests/test_train_command.py
            continue
        for arg in argv:  # the questions are ones the demo was trained on
            assert not arg.endswith("?") or arg in QUESTIONS or "ASSISTANT:" in arg, arg
        if command == "convert-original":  # the recipe of README and weights.md, run by tests/test_docs.py
            line = " ".join(["minillava", *argv])
            assert all(line in " ".join(doc.read_text().replace("\\\n", "").split())
                       for doc in (ROOT / "README.md", ROOT / "weights.md")), line
            continue
        if not torch.cuda.is_available():
            argv = ["cpu" if a == "cuda" else a for a in argv]
        if argv[0] == "compare" and not Path("mine.safetensors").exists():  # the reader's engine's dump: here ours
            Path("mine.safetensors").symlink_to(tmp_path / "ref.safetensors")
        code, out, err = run(*argv, stdin="/quit\n")
        assert code == 0 and not err, (argv, err)
        ran += 1
    assert ran == 12


def test_progress_bar_only_on_a_terminal_and_erased(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    code, _, err = run("ask", "--max-new-tokens", "2", "Hi")  # not a terminal: nothing
    assert code == 0 and err == ""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert cli.main(["ask", "--max-new-tokens", "2", "Hi"], stdout=io.StringIO()) == 0
    text = term.getvalue()
    assert "loading weights [" in text and text.endswith("\r") and text.rsplit("\r", 2)[1].strip() == ""
