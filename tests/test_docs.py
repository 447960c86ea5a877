"""Every code block of README.md and weights.md runs, so that none can drift from the code.

The blocks of a document run in order in a scratch folder holding tiny stand-ins under the names the document
uses: `llava-1.5-7b-hf` (and the 13b and bakLlava names) is a tiny random llava-hf checkpoint, `photo.jpg` and
`photo2.jpg` photos, `minillava/` the package (for `minillava/demo/example.png`). Python blocks are executed;
blocks marked `text` show output and are not run. Shell blocks run command by command: `minillava ...` through
minillava.cli.main; `hf download` and `git clone` copy the stand-in of the repository they name (the original
release's stand-in is the same tiny model in liuhaotian's layout), so a recipe naming a wrong repository, file or
folder fails; the few commands that install or start other programs are in NOT_RUN, with what runs them
instead. Without a GPU, `cuda` becomes `cpu`.
"""
import contextlib
import fnmatch
import io
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import minillava
from minillava import cli
from tests.helpers import checkpoints as C
from tests.test_original import write_original
from tests.test_train_command import write_records

ROOT = Path(__file__).parent.parent
DOCS = ["README.md", "weights.md"]
NOT_RUN = {
    ("python3", "-m", "pip", "install"): "installs packages: .ci/run runs README's commands on a fresh machine",
    ("python3", "-m", "pytest"): "this test suite",
    ("jupyter", "lab"): "an interactive front end: tests/test_notebooks.py runs every notebook with nbclient",
    ("git", "lfs", "install"): "sets up git-lfs; the git clone after it is replaced by a copy",
}
LLAVA_HF = ["llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf", "llava-hf/bakLlava-v1-hf"]


def blocks(doc):
    """(language, code) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", (ROOT / doc).read_text(encoding="utf-8"), re.S | re.M)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """{hub repository: folder} for every repository the documents download."""
    root = tmp_path_factory.mktemp("hub")
    hf = C.build(root / "hf", "mha", seed=21)
    original, clip = write_original(hf, root / "original")
    (original / "tokenizer.json").unlink()  # the liuhaotian repositories have only tokenizer.model
    return {**dict.fromkeys(LLAVA_HF, hf), "liuhaotian/llava-v1.5-7b": original,
            "openai/clip-vit-large-patch14-336": clip}


def hf_download(argv, hub):
    """`hf download REPO [FILES...] --local-dir DIR [--include PATTERN...]`, from the stand-ins."""
    repo, files, local_dir, include, i = argv[0], [], None, [], 1
    while i < len(argv):
        if argv[i] in ("--local-dir", "--include"):
            (include.append(argv[i + 1]) if argv[i] == "--include" else None)
            local_dir = argv[i + 1] if argv[i] == "--local-dir" else local_dir
            i += 2
        else:
            files.append(argv[i])
            i += 1
    assert repo in hub, f"hf download of an unknown repository {repo}"
    assert local_dir, "hf download without --local-dir"
    Path(local_dir).mkdir(exist_ok=True)
    for f in hub[repo].iterdir():
        if (not files or f.name in files) and (not include or any(fnmatch.fnmatch(f.name, p) for p in include)):
            shutil.copy(f, Path(local_dir) / f.name)
    for name in files:
        assert (hub[repo] / name).is_file(), f"{repo} has no {name}"


def run_command(argv, hub):
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value before a command: one the code reads
        name = argv.pop(0).split("=")[0]
        sources = [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "minillava").rglob("*.py")]
        read = rf"environ.get\(\\?\"{name}\\?\"\)"
        assert any(re.search(read, p.read_text()) for p in sources), f"nothing reads ${name}"
    if any(tuple(argv[:len(k)]) == k for k in NOT_RUN):
        return
    if argv[:2] == ["hf", "download"]:
        return hf_download(argv[2:], hub)
    if argv[:2] == ["git", "clone"]:
        repo = argv[2].removeprefix("https://huggingface.co/")
        assert repo in hub, argv
        # an alternative to the hf download above it, so the folder may exist already
        shutil.copytree(hub[repo], Path(argv[-1] if len(argv) > 3 else repo.split("/")[1]), dirs_exist_ok=True)
        return
    assert argv[0] == "minillava", f"a command the documentation test does not know: {argv}"
    if argv[1] == "compare":  # the reader's engine's dump: here ours, under the names its --map gives
        maps = [argv[i + 1].split("=") for i in range(len(argv)) if argv[i] == "--map"]
        renames = {ours: theirs for theirs, ours in maps}
        save_file({renames.get(k, k): v for k, v in load_file(argv[2]).items()}, argv[3])
    if argv[1] == "train":  # on the stand-in records and images, cut short
        argv = argv + ["--steps", "2", "--batch-size", "2"]
    if not torch.cuda.is_available():
        argv = ["cpu" if a == "cuda" else a for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv[1:], stdin=io.StringIO("What is shown here?\n/quit\n"), stdout=out)
    assert code == 0, (argv, err.getvalue())


def run_python(code):
    if not torch.cuda.is_available():
        code = code.replace('device="cuda"', 'device="cpu"')

    class Engine:  # "my_engine", the implementation a reader tests against minillava: here minillava itself
        def logits(self, ids, pixel_values):
            return minillava.load("llava-1.5-7b-hf")[0](ids, pixel_values)
    argv = sys.argv
    sys.argv = ["check_download.py", "llava-1.5-7b-hf"]  # the script of weights.md section 6
    try:
        exec(compile(code, "<doc>", "exec"), {"__name__": "__main__", "my_engine": Engine()})
    except SystemExit as e:
        assert e.code in (0, None), f"the block exited with {e.code}"
    finally:
        sys.argv = argv


@pytest.mark.parametrize("doc", DOCS)
def test_every_code_block_runs(doc, stand_ins, record_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("llava-1.5-7b-hf", "llava-1.5-13b-hf", "bakLlava-v1-hf"):
        shutil.copytree(stand_ins[f"llava-hf/{name}"], name)
    shutil.copytree(stand_ins["llava-hf/llava-1.5-7b-hf"], "llava-tiny")  # minillava train's examples
    write_records(tmp_path)
    (tmp_path / "images").symlink_to(record_images)
    (tmp_path / "minillava").symlink_to(ROOT / "minillava")
    for name in ("photo.jpg", "photo2.jpg"):
        shutil.copy(ROOT / "minillava" / "demo" / "example.png", name)  # PIL reads by content
    ran = 0
    for language, code in blocks(doc):
        assert language in ("", "bash", "python", "text"), language
        if language == "text":  # what a command prints, shown, not run
            pass
        elif language == "python":
            run_python(code)
        else:
            for line in code.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words:
                    command = words[:words.index("&&")] if "&&" in words else words
                    run_command(list(command), stand_ins)
                    words = words[len(command) + 1:]
        ran += 1
    assert ran == len(blocks(doc)) >= 6


def test_one_convert_recipe():
    recipes = [re.search(r"<!-- convert-recipe -->\n(.*?)<!-- /convert-recipe -->", (ROOT / d).read_text(), re.S)
               for d in DOCS]
    assert all(recipes) and recipes[0].group(1) == recipes[1].group(1)
    assert "llava-1.5-7b-converted" in recipes[0].group(1)
