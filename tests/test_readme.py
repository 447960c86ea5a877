"""The README stays true: its module map's line counts, its commands, and its Python example."""
import re
import subprocess
import sys
from pathlib import Path

import minillava

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block(name):
    return re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", README, re.S).group(1)


def test_module_map_line_counts_are_true():
    rows = re.findall(r"^\| `(minillava/[\w/]+\.py)` \| (\d+) \|", block("module-map"), re.M)
    listed = {path: int(n) for path, n in rows}
    actual = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
              for p in (ROOT / "minillava").rglob("*.py")}
    assert listed == actual


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "pytest" in block("test-command")


def test_python_example_runs_on_the_demo(tmp_path):
    code = re.search(r"```python\n(import minillava\n\nmodel, processor = minillava.load.*?)```", README, re.S).group(1)
    example = minillava.DEMO / "example.png"
    code = code.replace('"llava-1.5-7b-hf"', "None").replace('"photo.jpg"', repr(str(example)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip()
