"""The notebooks in notebooks/ run top to bottom against the current code, on the embedded demo checkpoint,
and are committed with their outputs.

A notebook that drifts from the package (a renamed function, a changed shape) fails here. Each notebook is its own
source; notebooks/run.py executes it and stamps every code cell with a hash of its source, so a cell edited after
its outputs were saved fails here. Outputs are not compared with the committed ones: timings and the machine differ.
"""
import importlib.util
from pathlib import Path

import pytest

import minillava

nbformat = pytest.importorskip("nbformat", reason="the test extra's nbformat/nbclient are not installed here")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

FOLDER = Path(__file__).parent.parent / "notebooks"
NAMES = ["01_pixels", "02_vision_tower", "03_projector", "04_decoder", "05_prompt_and_merge", "06_generation",
         "07_parity"]


def read(name):
    return nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)


def runner():
    spec = importlib.util.spec_from_file_location("notebooks_run", FOLDER / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebooks_are_all_there():
    assert sorted(p.stem for p in FOLDER.glob("*.ipynb")) == NAMES
    assert runner().NAMES == NAMES
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_demo(name, monkeypatch):
    if not (minillava.DEMO / "config.json").is_file():
        pytest.skip(f"{minillava.DEMO} holds no checkpoint yet")
    monkeypatch.delenv("MINILLAVA_CHECKPOINT", raising=False)  # the default: the embedded demo
    # One thread per kernel: the models are tiny, and on a small shared machine several busy threads cost
    # far more (measured 4x slower on 2 loaded cores) than they gain.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = read(name)
    NotebookClient(nb, timeout=120, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(FOLDER)}}).execute()  # raises CellExecutionError
