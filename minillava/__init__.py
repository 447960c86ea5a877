"""minillava: LLaVA-1.5 in a handful of readable PyTorch modules.

    model, processor = minillava.load("path/to/llava-1.5-7b-hf")
    inputs = processor(text="USER: <image>\\nWhat is this? ASSISTANT:", images=photo)
    logits = model(**inputs)  # (1, T, vocab), equal to transformers' LlavaForConditionalGeneration
"""
from pathlib import Path

from .config import LlavaConfig, TextConfig, VisionConfig
from .errors import (CheckpointError, ConfigError, DeviceError, GenerationError, ImageError, MinillavaError,
                     PromptError, TokenizerError)
from .llava import Llava
from .processor import Processor

DEMO = Path(__file__).parent / "demo"  # the tiny LLaVA minillava trains itself (see minillava/demo/train.py)


def load(path=None, device="cpu", dtype=None, progress=False):
    """Load a llava-hf checkpoint folder (the embedded demo when `path` is None): (model, processor)."""
    path = Path(path) if path is not None else DEMO
    model = Llava.from_pretrained(path, device=device, dtype=dtype, progress=progress)
    return model, Processor.from_pretrained(path, config=model.config)


__all__ = ["load", "Llava", "Processor", "LlavaConfig", "TextConfig", "VisionConfig", "MinillavaError", "ConfigError",
           "CheckpointError", "TokenizerError", "ImageError", "PromptError", "GenerationError", "DeviceError", "DEMO"]
