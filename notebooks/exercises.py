"""`check`, for the exercises at the end of each notebook: it says whether an answer is right, never what
the right answer is.

Each exercise is a cell that starts with "# Exercise N" and sets `answer_N` (None until you answer), then a
cell that calls `check(answer_N, expected)`, where `expected` is computed from the model, the processor or an
experiment, so the checks hold for any checkpoint $MINILLAVA_CHECKPOINT names. A solution follows each check,
folded away. tests/test_notebooks.py runs every notebook with the solutions in place and requires every check
to say "right".
"""
import numpy as np
import torch


def check(answer, expected, tol=0.0):
    """Print whether `answer` equals `expected`: numbers, tuples, lists, strings, tensors or arrays;
    numbers and array values within `tol`. Only the verdict is printed."""
    if answer is None:
        print("not answered yet: set the answer in the cell above, run it, then run this cell again")
        return
    if torch.is_tensor(answer) or isinstance(answer, np.ndarray):
        answer, expected = (x.detach() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
                            for x in (answer, expected))
        if answer.shape != expected.shape:
            print(f"not right yet: your answer has shape {tuple(answer.shape)}, which is not the expected shape")
            return
        right = bool(((answer.double() - expected.double()).abs() <= tol).all())
    elif isinstance(answer, (tuple, list)) and isinstance(expected, (tuple, list)):
        right = len(answer) == len(expected) and all(_same(a, e, tol) for a, e in zip(answer, expected))
    else:
        right = _same(answer, expected, tol)
    print("right" if right else "not right yet: try again")


def _same(a, e, tol):
    if isinstance(a, (int, float, np.number)) and isinstance(e, (int, float, np.number)) and not isinstance(a, bool):
        return abs(float(a) - float(e)) <= tol
    return a == e
