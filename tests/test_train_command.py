"""`minillava train`: it writes a folder `minillava ask` answers with, shows a bar on a terminal and log lines
elsewhere, refuses every unusable flag in one line naming it (exit status 2), and a Ctrl-C ends it with status 130
keeping the last step it saved. (The loop itself is checked against transformers in tests/test_finetune.py.)"""
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import minillava
from minillava import cli, finetune, testing
from tests.helpers import HANG_S
from tests.test_cli import EXAMPLE, one_line_error, run
from tests.test_training_loss import RECORDS


@pytest.fixture(scope="module")
def data(tmp_path_factory, record_images):
    """A tiny checkpoint, the records as a JSON file and their image folder."""
    folder = tmp_path_factory.mktemp("train")
    write_records(folder)
    return testing.write_checkpoint(folder / "llava-tiny", "gqa"), folder / "records.json", record_images


def write_records(folder):
    """records.json (tests/test_training_loss.py's records) and captions.json (those with an image, one exchange
    each: stage 1's), their images in the record_images fixture's folder."""
    (folder / "records.json").write_text(json.dumps(RECORDS))
    captions = [{**r, "conversations": r["conversations"][:2]} for r in RECORDS if "image" in r]
    (folder / "captions.json").write_text(json.dumps(captions))


def train(data, out, *flags):
    model, records, images = data
    return run("train", "--model", str(model), "--data", str(records), "--images", str(images), "--out", str(out),
               *flags)


def test_train_writes_a_folder_that_ask_answers_with(data, tmp_path):
    code, out, err = train(data, tmp_path / "tuned", "--steps", "3", "--batch-size", "2", "--log-every", "2",
                           "--lr", "1e-3")
    assert code == 0 and not err, err
    lines = out.splitlines()
    assert lines[0] == (f"training {data[0]} on 3 records: stage 2, format vicuna_v1, batches of 2, peak lr 0.001, "
                        f"on cpu")
    assert [line.split("  ")[0] for line in lines[1:3]] == ["step 2/3", "step 3/3"]
    assert "loss" in lines[1] and "(mean of 2)" in lines[1] and "(mean of 1)" in lines[2]
    assert lines[3] == f"wrote {tmp_path / 'tuned'} (step 3)"
    assert finetune.saved_step(tmp_path / "tuned") == 3
    code, answer, err = run("ask", "--model", str(tmp_path / "tuned"), "--image", EXAMPLE, "--max-new-tokens", "3",
                            "What is it?")
    assert code == 0 and answer.strip() and not err, err


def test_a_bar_on_a_terminal(data, tmp_path, monkeypatch):
    class Terminal(__import__("io").StringIO):
        def isatty(self):
            return True
    out = Terminal()
    model, records, images = data
    assert cli.main(["train", "--model", str(model), "--data", str(records), "--images", str(images), "--out",
                     str(tmp_path / "tuned"), "--steps", "2", "--batch-size", "2"], stdout=out) == 0
    text = out.getvalue()
    assert "\rstep 1/2 [" + "#" * 15 + "." * 15 + "] loss " in text and "\rstep 2/2 [" + "#" * 30 + "] loss" in text
    assert text.endswith(f"s/step\nwrote {tmp_path / 'tuned'} (step 2)\n")


@pytest.mark.parametrize("flags, words", [
    (["--steps", "0"], ["--steps", "0 is not an integer >= 1"]),
    (["--steps", "ten"], ["--steps", "'ten' is not an integer >= 1"]),
    (["--lr", "nan"], ["--lr", "nan is not a finite number > 0"]),
    (["--lr", "0"], ["--lr", "0 is not a finite number > 0"]),
    (["--lr", "inf"], ["--lr", "inf is not a finite number > 0"]),
    (["--batch-size", "0"], ["--batch-size", "0 is not an integer >= 1"]),
    (["--save-every", "-2"], ["--save-every", "-2 is not an integer >= 1"]),
    (["--max-length", "0"], ["--max-length", "0 is not an integer >= 1"]),
    (["--warmup-ratio", "1.5"], ["--warmup-ratio", "1.5 is not a number from 0 to 1"]),
    (["--weight-decay", "-0.1"], ["--weight-decay", "-0.1 is not a finite number >= 0"]),
    (["--seed", "-1"], ["--seed", "-1 is not an integer from 0"]),
    (["--stage", "3"], ["--stage", "invalid choice: 3"]),
    (["--format", "llava"], ["--format", "invalid choice: 'llava'"]),
    (["--device", "cuda:7"], ["cuda:7"]),
    (["--max-length", "5"], ["record #2 (id 'caption'): 127 tokens", "max_length 5 would cut into its image's tokens"]),
])
def test_unusable_flags_are_one_line_naming_them(data, tmp_path, flags, words):
    one_line_error(*train(data, tmp_path / "tuned", *flags)[::2], *words)


def test_unusable_data_and_folders_are_one_line(data, tmp_path):
    model, records, images = data
    one_line_error(*run("train", "--data", str(tmp_path / "none.json"), "--out", str(tmp_path / "o"))[::2],
                   "none.json: cannot read the records")
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "q", "conversations": [{"from": "gpt", "value": "Hi"}]}]))
    one_line_error(*run("train", "--data", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o"))[::2],
                   "record #0 (id 'q'), turn 0: from 'gpt', expected 'human'")
    code, out, err = train(data, model)
    one_line_error(code, err, "is the folder the model was loaded from")
    assert not out  # refused before anything is said about a run
    one_line_error(*run("train", "--model", str(model), "--data", str(records), "--out", str(tmp_path / "o"))[::2],
                   "record #0 (id 'two-turns'): its image wide.png does not exist")
    assert run("train", "--out", "o")[0] == 2  # --data is required


def test_ctrl_c_keeps_the_last_saved_step(data, tmp_path):
    model, records, images = data
    out = tmp_path / "tuned"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "minillava", "train", "--model", str(model), "--data", str(records),
                          "--images", str(images), "--out", str(out), "--steps", "100000", "--batch-size", "2",
                          "--save-every", "2", "--log-every", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().startswith("training")
        while not p.stdout.readline().startswith("step 3/"):  # steps 2 and maybe more saved
            pass
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=HANG_S)
    finally:
        p.kill()
    assert p.returncode == 130 and not err, err
    stopped = rest.splitlines()[-1]
    saved = finetune.saved_step(out)
    assert saved % 2 == 0 and stopped.startswith("stopped after step ") and stopped.endswith(
        f"; {out} holds step {saved}"), stopped
    minillava.load(out)  # a whole checkpoint


def test_help_examples_run(data, tmp_path, monkeypatch):
    """train --help's examples, on stand-ins (llava-tiny, the records and their images here) and cut to 2 steps."""
    model, records, images = data
    monkeypatch.chdir(tmp_path)
    for name in ("llava-tiny", "records.json", "captions.json"):
        (tmp_path / name).symlink_to(model.parent / name)
    (tmp_path / "images").symlink_to(images)
    (tmp_path / "minillava").symlink_to(minillava.DEMO.parent)
    lines = [line.strip() for line in cli.EXAMPLES["train"].replace("\\\n", "").splitlines()]
    commands = [shlex.split(line.removeprefix("Then ask the result: ")) for line in lines if "minillava " in line]
    assert [c[1] for c in commands] == ["train", "train", "train", "ask"]
    for argv in commands:
        argv = ["cpu" if a == "cuda" else a for a in argv[1:]]
        if argv[0] == "train":
            argv += ["--steps", "2", "--batch-size", "2"]
        code, _, err = run(*argv)
        assert code == 0 and not err, (argv, err)
    assert Path("demo-tuned/model.safetensors").is_file()
