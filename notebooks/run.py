"""Run the notebooks of this folder top to bottom on the embedded demo and save them with their outputs.

    python notebooks/run.py              # all of them
    python notebooks/run.py 04 06        # only these (a prefix is enough)

Each notebook is its own source: edit it in Jupyter (or any editor of .ipynb files), then run this script
so that the committed outputs are the ones its cells produce. Every code cell is stamped with a hash of
its source when it runs here; tests/test_notebooks.py fails on a cell edited since (re-run this script).

Each notebook picks its checkpoint from $MINILLAVA_CHECKPOINT (any llava-hf folder), else the demo in
minillava/demo. The committed outputs come from the demo: the variable is unset while this script runs.
"""
import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NAMES = sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.ipynb"))


def source_hash(cell):
    return hashlib.sha256(cell.source.encode("utf-8")).hexdigest()[:16]


def execute(nb, timeout=1800):
    """Run every cell. `timeout` (seconds a cell may take) only catches a hang: the whole of notebook 08 takes
    about 100 s on a quiet 2-core machine, and its training cell alone has run past 120 s on a slow CI runner."""
    # One thread per kernel: the demo is tiny, and extra threads on a busy machine cost more than they gain
    # (the timings printed in 05_decoder come from this setting).
    env = {k: v for k, v in os.environ.items() if k != "MINILLAVA_CHECKPOINT"}
    env["OMP_NUM_THREADS"] = "1"
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, startup_timeout=timeout, iopub_timeout=120, kernel_name="python3",
                       record_timing=False, resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata["source_hash"] = source_hash(cell)
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (a prefix such as 04 is enough); default all")
    args = parser.parse_args(argv)
    for name in [n for n in NAMES if not args.names or any(n.startswith(a) for a in args.names)]:
        start = time.perf_counter()
        nb = execute(nbformat.read(HERE / f"{name}.ipynb", as_version=4))
        nbformat.write(nb, HERE / f"{name}.ipynb")
        size = (HERE / f"{name}.ipynb").stat().st_size
        print(f"{name}.ipynb  {size / 1024:6.1f} KiB  {time.perf_counter() - start:5.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
