"""`python -m minillava`: the `minillava` command (minillava/cli.py)."""
from .cli import run

run()
