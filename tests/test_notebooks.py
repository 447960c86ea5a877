"""The notebooks in notebooks/ run top to bottom against the current code, on the embedded demo checkpoint,
are committed with their outputs, and end with exercises whose solutions pass their checks.

A notebook that drifts from the package (a renamed function, a changed shape) fails here. Each notebook is its own
source; notebooks/run.py executes it and stamps every code cell with a hash of its source, so a cell edited after
its outputs were saved fails here. Outputs are not compared with the committed ones (timings and the machine
differ), but every number the text states must be printed by the fresh outputs too (tests/test_stated_numbers.py).

The run here puts each exercise's folded solution in place of its answer cell, and every check must then say
"right"; the committed notebooks are run without them, so their checks say "not answered yet".
"""
import importlib.util
import re
from pathlib import Path

import pytest

import minillava
from tests.helpers import HANG_S
from tests.test_stated_numbers import unaccounted

nbformat = pytest.importorskip("nbformat", reason="the test extra's nbformat/nbclient are not installed here")
pytest.importorskip("nbclient", reason="the test extra's nbformat/nbclient are not installed here")

FOLDER = Path(__file__).parent.parent / "notebooks"
README = (FOLDER.parent / "README.md").read_text(encoding="utf-8")


def runner():
    spec = importlib.util.spec_from_file_location("notebooks_run", FOLDER / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NAMES = runner().NAMES  # every NN_name.ipynb in notebooks/, in reading order


def read(name):
    return nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)


def exercises(nb):
    """[(number, index of the answer cell, index of its check cell, the solution's code)] in order: the answer cell
    starts with "# Exercise N", the check is the next code cell, the solution the python block of the next
    "<details>" markdown cell."""
    found = []
    for i, cell in enumerate(nb.cells):
        match = re.match(r"# Exercise (\d+)", cell.source) if cell.cell_type == "code" else None
        if match:
            check = next(j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code")
            details = next(c.source for c in nb.cells[check:] if c.cell_type == "markdown" and "<details>" in c.source)
            solution = re.search(r"```python\n(.*?)```", details, re.S).group(1)
            found.append((int(match.group(1)), i, check, solution))
    return found


def outputs_text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def test_the_notebooks_are_all_there():
    assert NAMES == sorted(p.stem for p in FOLDER.glob("*.ipynb"))
    # README's "Notebooks" section lists every notebook, in reading order
    section = README[README.index("## Notebooks\n"):]
    section = section[:section.index("\n## ")]
    assert re.findall(r"^\| `notebooks/(\w+)\.ipynb` \|", section, re.M) == NAMES
    total = sum((FOLDER / f"{name}.ipynb").stat().st_size for name in NAMES)
    assert total < 2_000_000, f"the notebooks take {total:,} bytes with their outputs; keep figures small"


@pytest.mark.parametrize("name", NAMES)
def test_committed_with_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "commit the notebook executed (python notebooks/run.py)"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "executed top to bottom, once"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "every notebook shows at least one figure"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) // 2, "prose between the code cells"
    # the outputs come from these very sources: run.py stamped each cell with its source's hash when it ran
    stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and c.metadata.get("source_hash") != runner().source_hash(c)]
    assert not stale, f"cells {stale} were edited after the notebook ran: python notebooks/run.py {name[:2]}"


@pytest.mark.parametrize("name", NAMES)
def test_ends_with_exercises_that_are_checked(name):
    nb = read(name)
    found = exercises(nb)
    assert [n for n, *_ in found] in ([1, 2], [1, 2, 3]), "two or three exercises, numbered from 1"
    first = found[0][1]
    assert not any(c.cell_type == "markdown" and c.source.startswith("## ") for c in nb.cells[first:]), \
        "the exercises come last"
    for n, answer, check, solution in found:
        assert re.search(rf"^answer_{n} = ", nb.cells[answer].source, re.M), f"exercise {n} sets answer_{n}"
        assert f"answer_{n}" in nb.cells[check].source and "check(" in nb.cells[check].source
        assert f"answer_{n} =" in solution
        # committed unanswered: the check says so, and shows nothing of the answer
        assert outputs_text(nb.cells[check]).startswith("not answered yet"), outputs_text(nb.cells[check])


def with_solutions(nb):
    for _, answer, _, solution in exercises(nb):
        nb.cells[answer].source = solution
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_demo_and_the_solutions_pass(name):
    if not (minillava.DEMO / "config.json").is_file():
        pytest.skip(f"{minillava.DEMO} holds no checkpoint yet")
    nb = with_solutions(read(name))
    # as notebooks/run.py runs it: on the embedded demo, one thread per kernel, limits that only catch a hang
    runner().execute(nb, timeout=HANG_S)  # raises CellExecutionError
    verdicts = {n: outputs_text(nb.cells[check]).strip() for n, _, check, _ in exercises(nb)}
    assert all(v == "right" for v in verdicts.values()), f"the solutions do not pass their checks: {verdicts}"
    assert not unaccounted(nb), f"numbers in the text that this run's outputs do not print: {unaccounted(nb)}"
