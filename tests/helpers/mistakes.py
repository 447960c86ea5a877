"""Shared by the tests of user mistakes: a checkpoint small enough that a load costs milliseconds, and
`raises`, which checks the exception type and that the message names the culprit."""
import json

import numpy as np
import pytest

from minillava import MinillavaError

# A checkpoint smaller than checkpoints.py's default, so a load costs milliseconds: vocab 64, one layer each.
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 64, "vocab_size": 64, "model_type": "llama"}
VISION = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 28, "patch_size": 14, "model_type": "clip_vision_model"}
IMAGE_ID = 63



def raises(exc, *names, call):
    """Assert call() raises exactly the minillava type `exc` and that its message names every string in `names`."""
    with pytest.raises(MinillavaError) as e:
        call()
    assert type(e.value) is exc, f"{type(e.value).__name__}: {e.value}"
    for name in names:
        assert str(name) in str(e.value), f"{name!r} not in message: {e.value}"
    return str(e.value)


def edit_config(folder, change):
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def photo(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1).astype(np.uint8)


def save(img, path, **kw):
    img.save(path, **kw)
    return path

