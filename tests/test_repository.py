"""The house rules a reader relies on: one job per module, model files that hold only the model, no reference to a
file or a name that does not exist, no public name that hides a module, and a clean linter (which keeps lines within
pyproject.toml's line-length)."""
import ast
import importlib
import importlib.util
import inspect
import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "minillava"
CEILING = 400  # lines; see test_every_module_has_one_job
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
def test_every_module_has_one_job(path):
    """Each module says in its docstring what it is for (README's module map gives its role, tests/test_readme.py
    checks it lists every module). CEILING is no budget to squeeze into: it sits well above every module here, and a
    module that grows past it most likely does two jobs and is split by role, each part one job."""
    text = path.read_text(encoding="utf-8")
    assert ast.get_docstring(ast.parse(text)), f"{path.name}: no docstring saying what the module is for"
    assert len(text.splitlines()) <= CEILING, f"{path.name}: over {CEILING} lines: which two jobs does it do?"


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


def test_no_public_name_hides_a_module():
    """`import minillava.x as m` gives the module x: every public name of a package is its module or a name that
    none of its modules has (a function `compare` beside a compare.py would hide the module)."""
    hidden = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        package = importlib.import_module(".".join(init.parent.relative_to(ROOT).parts))
        submodules = {p.stem for p in init.parent.glob("*.py")}
        submodules |= {p.parent.name for p in init.parent.glob("*/__init__.py")}
        for name, value in vars(package).items():
            if name in submodules and not name.startswith("_") and not inspect.ismodule(value):
                hidden.append(f"{package.__name__}.{name} is a {type(value).__name__} and hides the module {name}")
    assert not hidden, "\n".join(hidden)


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


# ---- every name the project cites exists -----------------------------------------------------------------

# how the documents call the objects they talk about: `processor.decode` is a method of a Processor. (`model.` is
# not among them: the checkpoint keys of three layouts start with it, `model.mm_projector.0.weight` ...)
INSTANCES = ("processor", "config", "tokenizer", "session", "cache", "report")
# roots of names that are not minillava's, besides every importable module (`torch.load`, `json.loads`)
ELSEWHERE = {"F", "nn", "np", "Image", "self", "args", "hf", "model",
             "loop", "s"}  # Jinja's loop variable; a str in limits.py's comments
# files the documents name that live in other projects or that a reader writes
FILES_ELSEWHERE = {"test_my_engine.py": "README's pytest example", "check_download.py": "weights.md's script",
                   "llava/": "haotian-liu/LLaVA, the original repository",
                   "fastchat/": "lm-sys/FastChat, Vicuna's conversation formats",
                   "models/llava/convert_": "transformers' repository (conversion scripts are not in its wheel)",
                   "jinja2/": "the jinja2 package (its filters, in limits.py)",
                   "newer.py": "a file tests/test_torch_floor.py writes to check the check"}
FILE_SUFFIXES = ("json", "py", "md", "safetensors", "bin", "png", "jpg", "jinja", "txt", "model", "ipynb", "pt",
                 "pth", "toml", "cpp", "index", "sh", "gz", "cfg", "ckpt")


def prose():
    """(file, text) of everything the project says in words: README.md, weights.md, the notebooks' markdown,
    and the docstrings, comments and strings of its Python files (f-string fields left out)."""
    for f in text_files():
        name = f.relative_to(ROOT).as_posix()
        if f == Path(__file__) or f.suffix == ".toml":
            continue
        if f.suffix == ".md":
            yield name, f.read_text(encoding="utf-8")
        elif f.suffix == ".ipynb":
            cells = json.loads(f.read_text(encoding="utf-8"))["cells"]
            yield name, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            tokens = tokenize.generate_tokens(io.StringIO(f.read_text(encoding="utf-8")).readline)
            words = [t.string for t in tokens if t.type in (tokenize.COMMENT, tokenize.STRING)]
            yield name, "\n".join(re.sub(r"\{[^{}]*\}", "", w) if re.match(r"[rb]?f", w, re.I) else w for w in words)


def modules():
    """{dotted module name: module} for the whole package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "minillava.__main__":  # running it runs the command line
            found[name] = importlib.import_module(name)
    return found


def resolve(obj, attributes):
    for a in attributes:
        if not hasattr(obj, a) and a not in getattr(obj, "__dataclass_fields__", {}):
            return False
        obj = getattr(obj, a, None)
    return True


@pytest.fixture(scope="module")
def instances():
    import minillava
    from minillava.comparison import compare
    model, processor = minillava.load()
    stages = {"logits": torch.zeros(1, 2, 3)}
    return {"model": model, "processor": processor, "config": model.config, "tokenizer": processor.tokenizer,
            "session": minillava.ChatSession(model, processor), "cache": model.new_cache(1, 2),
            "report": compare(stages, stages)}


def test_every_cited_name_exists(instances):
    """`minillava.x.y`, `module.name` (a minillava module, or an object named as the documents name them) and
    `Class.attribute`, cited anywhere in words, must exist."""
    mods = modules()
    by_stem = {}
    for dotted, module in mods.items():
        by_stem.setdefault(dotted.rsplit(".", 1)[-1], []).append(module)
    classes = {k: v for m in mods.values() for k, v in vars(m).items()
               if isinstance(v, type) and v.__module__.startswith("minillava")}
    top_level = {k: dotted for dotted, m in mods.items() for k, v in vars(m).items()
                 if not k.startswith("_") and not inspect.ismodule(v)}
    their_names = {path.rsplit("/", 1)[-1] for path in transformers_files()}
    missing = []
    for name, text in prose():
        text = re.sub(r"transformers'\s+`?[\w.]+", "", text)  # transformers' LlavaConfig.__post_init__: theirs
        code = text if name.endswith(".py") else " ".join(re.findall(r"`([^`\n]+)`", text))
        for dotted in set(re.findall(r"(?<![\w./-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?![\w/-])", code)):
            first, *rest = dotted.split(".")
            if rest[-1] in FILE_SUFFIXES or first in ELSEWHERE or f"{first}.py" in their_names or (
                    first not in by_stem and importlib.util.find_spec(first) is not None):
                continue
            if first == "minillava":
                known = minillava_name_exists(dotted, mods)
            elif first in by_stem or first in INSTANCES:
                known = any(resolve(m, rest) for m in by_stem.get(first, [])) or (
                    first in INSTANCES and resolve(instances[first], rest))
            elif first in classes:
                target = next((v for v in instances.values() if type(v) is classes[first]), classes[first])
                known = resolve(target, rest)
            elif first[0].islower() and rest[0] in top_level:  # a module that is gone, or renamed
                known = False
                dotted += f" ({rest[0]} is in {top_level[rest[0]]})"
            else:
                known = True  # another library's name
            if not known:
                missing.append(f"{name} cites {dotted}")
    assert not missing, "\n".join(sorted(missing))


def test_every_cited_file_exists():
    """A `name.py` named in words is in this repository, in transformers, or listed in FILES_ELSEWHERE; a
    `file.py` `Name` pair names something that file has. (Paths in this repository:
    test_no_reference_outside_the_repository.)"""
    mods = modules()
    here = {p.name for p in ROOT.rglob("*.py")} | {p.name for p in ROOT.rglob("*.md")}
    theirs = transformers_files()
    their_names = {path.rsplit("/", 1)[-1] for path in theirs}
    missing = []
    for name, text in prose():
        for path in set(re.findall(r"(?<![\w./-])((?:[\w.-]+/)*\w+\.py)\b", text)):
            if path.split("/")[0] in ("minillava", "tests", "notebooks", "benchmarks", ".ci"):
                continue
            if "/" in path:
                ok = (PACKAGE / path).exists() or path.removeprefix("transformers/") in theirs or any(
                    path.startswith(p) for p in FILES_ELSEWHERE)
            else:
                ok = path in here or path in FILES_ELSEWHERE or path in their_names
            if not ok:
                missing.append(f"{name} names {path}")
        for path, attribute in re.findall(r"`((?:minillava/)?[\w/]+)\.py`(?:'s)? `(\w+)", text):
            module = "minillava." + path.removeprefix("minillava/").replace("/", ".")
            if module in mods and not resolve(mods[module], [attribute]):
                missing.append(f"{name} cites {path}.py `{attribute}`")
    assert not missing, "\n".join(sorted(missing))


def transformers_files():
    """The paths of transformers' .py files, relative to its package folder (models/llava/modeling_llava.py)."""
    upstream = Path(importlib.util.find_spec("transformers").origin).parent
    return {p.relative_to(upstream).as_posix() for p in upstream.rglob("*.py")}


def minillava_name_exists(dotted, mods):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
        if ".".join(parts[:i]) in mods:
            return resolve(mods[".".join(parts[:i])], parts[i:])
    return False
