"""minillava: LLaVA-1.5 in a handful of readable PyTorch modules.

    model, processor = minillava.load("path/to/llava-1.5-7b-hf")
    inputs = processor(text="USER: <image>\\nWhat is this? ASSISTANT:", images=photo)
    logits = model(**inputs)  # (1, T, vocab), equal to transformers' LlavaForConditionalGeneration
    ids = minillava.generate(model, **inputs, max_new_tokens=20)
"""
from .comparison import compare
from .config import LlavaConfig, TextConfig, VisionConfig
from .errors import (
    CheckpointError,
    CompareError,
    ConfigError,
    DeviceError,
    GenerationError,
    ImageError,
    MinillavaError,
    PromptError,
    TokenizerError,
    TrainingError,
)
from .generation import generate
from .llava import Llava
from .loading import DEMO, load, load_model
from .processor import Processor
from .session import ChatSession, stream
from .verification import verify

__all__ = ["load", "load_model", "generate", "stream", "ChatSession", "Llava", "Processor", "LlavaConfig",
           "TextConfig", "VisionConfig", "compare", "verify", "MinillavaError", "ConfigError", "CheckpointError",
           "TokenizerError", "ImageError", "PromptError", "GenerationError", "DeviceError", "CompareError",
           "TrainingError", "DEMO"]
