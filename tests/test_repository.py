"""The house rules a reader relies on: modules short enough to read whole, model files that hold only the model,
no reference to a file that is not in the repository, and a clean linter."""
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "minillava"
# what each model file may import from minillava: the config, the errors, the shared building blocks, and
# (llava.py only) the other model files
MODEL_IMPORTS = {"layers.py": set(), "clip.py": {"config", "errors", "layers"},
                 "projector.py": {"config", "errors", "layers"}, "llama.py": {"config", "errors", "layers"},
                 "llava.py": {"config", "errors", "layers", "clip", "projector", "llama"}}


def text_files():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True).stdout.split()
    if not listed:  # not a git checkout (an sdist): every file
        listed = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()]
    return [ROOT / f for f in listed if f.endswith((".py", ".md", ".ipynb", ".toml")) and (ROOT / f).is_file()
            and not f.startswith("tests/fixtures/")]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_module_reads_in_one_sitting(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 300


@pytest.mark.parametrize("name", sorted(MODEL_IMPORTS))
def test_model_files_import_only_the_model(name):
    tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
    ours = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:  # from .config import ...
            ours.add((node.module or "").split(".")[0])
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert not any(n.split(".")[0] == "minillava" for n in names), f"{name}: import minillava relatively"
    assert ours <= MODEL_IMPORTS[name], f"{name} imports {sorted(ours - MODEL_IMPORTS[name])}"


def test_no_reference_outside_the_repository():
    """Every repository path and every .md document a file names exists; nothing points outside the repository."""
    path_like = re.compile(r"(?<![\w/.<-])((?:minillava|tests|notebooks|benchmarks|\.ci)/[\w./-]*\w)(?![\w*<])")
    missing = []
    for f in text_files():
        if f == Path(__file__):
            continue
        text, name = f.read_text(encoding="utf-8"), f.relative_to(ROOT)
        if "../shared" in text:
            missing.append(f"{name} points outside the repository (../shared)")
        for ref in set(path_like.findall(text)):
            if not (ROOT / ref).exists():
                missing.append(f"{name} names {ref}")
        for doc in set(re.findall(r"(?<![\w/.-])([A-Za-z_]+\.md)\b", text)):
            if not (ROOT / doc).exists() and not list(ROOT.glob(f"*/{doc}")):
                missing.append(f"{name} names {doc}")
    assert not missing, "\n".join(sorted(missing))


def test_the_linter_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.importorskip("ruff", reason="ruff (in the test extra) is not installed")
        ruff = [sys.executable, "-m", "ruff"]
    cmd = ([ruff] if isinstance(ruff, str) else ruff) + ["check", "--no-cache", "--quiet", str(ROOT)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]
