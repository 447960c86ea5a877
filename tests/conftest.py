import gc
import os
import shutil
from pathlib import Path

import pytest
import torch

from minillava import Processor, load_model, testing
from tests.helpers import checkpoints as C
from tests.helpers.mistakes import IMAGE_ID, TEXT, VISION
from tests.helpers.tokenizer_files import write_processor_files

torch.set_num_threads(min(4, os.cpu_count() or 1))


def pytest_collection_finish(session):
    # What the run has imported by now (torch, transformers, the test modules: some 400k objects) lives until
    # its end. Frozen, it leaves the garbage collector's generations, which each full collection would walk
    # again. On a 2-core runner with slow memory, tests/test_llava.py, test_generation.py and
    # test_training_loss.py spent 38.6 s of 136 s collecting garbage; frozen, 10.7 s of 80 s.
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """One valid tiny checkpoint folder (config.json + model.safetensors), built once by transformers."""
    return C.build(tmp_path_factory.mktemp("tiny") / "ckpt", "mha", processor=False, text_config=TEXT,
                   vision_config=VISION, image_token_index=IMAGE_ID, pad_token_id=62, vocab_size=64,
                   vision_feature_layer=-1)


@pytest.fixture
def ckpt(tiny, tmp_path):
    """A fresh copy of the tiny checkpoint for a test to break."""
    return Path(shutil.copytree(tiny, tmp_path / "ckpt"))


@pytest.fixture(scope="session")
def tiny_model(tiny):
    return load_model(tiny)


@pytest.fixture(scope="session")
def proc_src(tmp_path_factory):
    """Tokenizer and processor files of a llava-hf folder (a real Llama-2 tokenizer), built once."""
    return write_processor_files(tmp_path_factory.mktemp("proc") / "src", config=True)


@pytest.fixture
def proc(proc_src, tmp_path):
    """A fresh copy of proc_src for a test to break."""
    return Path(shutil.copytree(proc_src, tmp_path / "proc"))


@pytest.fixture(scope="session")
def tiny_processor(proc_src):
    return Processor.from_pretrained(proc_src)


@pytest.fixture(scope="session")
def record_images(tmp_path_factory):
    """The image folder of LLaVA training records (tests/test_training_*.py): wide.png 90 x 40, tall.png 40 x 70."""
    folder = tmp_path_factory.mktemp("record_images")
    testing.image(seed=1, size=(90, 40)).save(folder / "wide.png")
    testing.image(seed=2, size=(40, 70)).save(folder / "tall.png")
    return folder
