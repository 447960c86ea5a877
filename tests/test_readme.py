"""The README stays true: its module map, its commands, and its Python example."""
import os
import re
import subprocess
import sys
from pathlib import Path

import minillava
import minillava.testing
from tests.helpers import HANG_S

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block(name):
    return re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", README, re.S).group(1)


def test_module_map_lists_every_module_with_its_role():
    rows = re.findall(r"^\| `(minillava/[\w/]+\.py)` \| (.*) \|$", block("module-map"), re.M)
    listed = [path for path, _ in rows]
    assert sorted(listed) == sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "minillava").rglob("*.py"))
    assert len(set(listed)) == len(listed) and all(role.strip() for _, role in rows)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "pytest" in block("test-command")


def test_python_example_runs_on_the_demo(tmp_path):
    code = re.search(r"```python\n(import minillava\n\nmodel, processor = minillava.load.*?)```", README, re.S).group(1)
    example = minillava.DEMO / "example.png"
    code = code.replace('"llava-1.5-7b-hf"', "None").replace('"photo.jpg"', repr(str(example)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip()


def test_pytest_example_runs(tmp_path):
    """The "minillava in your tests" example, as a user would run it, with LLAVA_FOLDER set to the demo."""
    code = re.search(r"```python\n(.*?)```", block("pytest-example"), re.S).group(1)
    (tmp_path / "test_my_engine.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "LLAVA_FOLDER": str(minillava.DEMO), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_engine.py"],
                         capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert f"{len(minillava.testing.VARIANTS) + 1} passed" in run.stdout and "skipped" not in run.stdout, run.stdout
