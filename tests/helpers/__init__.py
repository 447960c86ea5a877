"""Helpers the tests share: tiny checkpoints built by transformers (checkpoints.py) and the tokenizer and
processor files of a llava-hf folder (tokenizer_files.py)."""
import pytest
import transformers

# How long a subprocess, a notebook cell or a process's reply may take before a test calls it hung. Only a hang
# should fail: on a small shared machine with slow memory (CI runners among them) a fresh process that imports
# torch and transformers has taken over a minute, a notebook's training cell over two, where a quiet machine
# takes seconds.
HANG_S = 1800

TRANSFORMERS = tuple(int(part) for part in transformers.__version__.split(".")[:2])


def skip_before_convert_rgb_of_5_23():
    """transformers 5.23 changed convert_rgb (image_transforms.py): transparency is composited onto white and
    arrays with 1 or 4 channels are converted too; earlier versions drop the alpha channel and pass arrays
    through unchanged. minillava does what 5.23 and later do, so these comparisons need one of them."""
    if TRANSFORMERS < (5, 23):
        pytest.skip(f"transformers {transformers.__version__} converts images to RGB as before 5.23 (alpha dropped, "
                    "arrays passed through); minillava follows 5.23 and later")
