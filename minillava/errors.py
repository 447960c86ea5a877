"""The exceptions minillava raises for mistakes a user can make.

One type per kind of mistake, all deriving from `MinillavaError`, so a caller can catch exactly
what it expects. Each message names the file, tensor or value at fault and what was expected.
"""


class MinillavaError(Exception):
    """Base class of every error minillava raises on purpose."""


class ConfigError(MinillavaError, ValueError):
    """`config.json` (or another JSON file) is missing, unreadable, or describes an impossible or
    unsupported model."""


class CheckpointError(MinillavaError):
    """Weight files are missing, truncated, corrupt, pickled, or do not fit the model."""


class TokenizerError(MinillavaError):
    """Tokenizer or processor files are missing, corrupt, or disagree with the model config."""


class ImageError(MinillavaError, ValueError):
    """An image cannot be opened, decoded or converted (corrupt, empty, too large, missing file)."""


class PromptError(MinillavaError, ValueError):
    """The text does not fit the images or the model: `<image>` count, empty or too-long prompt,
    a malformed conversation."""


class GenerationError(MinillavaError, ValueError):
    """Invalid generation settings: max_new_tokens, temperature, top_k, top_p."""


class DeviceError(MinillavaError):
    """The requested device or dtype is not available on this machine."""


class CompareError(MinillavaError, ValueError):
    """Two stage dumps cannot be compared: a file that is not a safetensors dump, a stage missing from one
    side, stages whose shapes differ, a malformed name mapping."""


class TrainingError(MinillavaError, ValueError):
    """A training record or setting is unusable: the record (by its id) and what is wrong with it, an image
    file it names that cannot be read, a format or stage that does not exist, weights that cannot be trained."""
