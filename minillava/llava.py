"""The LLaVA-1.5 model: CLIP tower -> projector -> image features scattered into the `<image>`
positions of the token embeddings -> Llama decoder -> logits.

Liu et al. 2023, "Visual Instruction Tuning" and "Improved Baselines with Visual Instruction
Tuning". Matches `LlavaForConditionalGeneration` in transformers' models/llava/modeling_llava.py.
The attribute names are the top-level checkpoint keys: `vision_tower`, `multi_modal_projector`,
`language_model`.
"""
from pathlib import Path

import torch
import torch.nn as nn

from .clip import CLIPVisionModel
from .config import DTYPES, LlavaConfig
from .errors import CheckpointError, ConfigError, DeviceError, PromptError
from .llama import LlamaForCausalLM
from .projector import LlavaMultiModalProjector
from .weights import check_layer_counts, load_weights, open_checkpoint


class Llava(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        if config.tie_word_embeddings:
            self.language_model.lm_head.weight = self.language_model.model.embed_tokens.weight

    @property
    def device(self):
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self):
        return self.language_model.lm_head.weight.dtype

    # --- the stages, each callable on its own (notebooks and the `logits` command show them) ---

    def vision_features(self, pixel_values):
        """(n_images, 3, H, W) -> the selected CLIP hidden states, (n_images, n_tokens, D_vision * n_layers)."""
        selected = self.vision_tower(pixel_values, self.config.feature_layers)
        if self.config.vision_feature_select_strategy == "default":
            selected = [h[:, 1:] for h in selected]  # drop the CLS token: 576 patch tokens remain
        return torch.cat(selected, dim=-1)

    def image_features(self, pixel_values):
        """(n_images, 3, H, W) -> projected image features, (n_images, n_tokens, D_text)."""
        return self.multi_modal_projector(self.vision_features(pixel_values))

    def embed(self, input_ids, pixel_values=None, image_features=None):
        """Token embeddings with the image features written into the `<image>` positions, (B, T, D)."""
        vocab = self.config.text_config.vocab_size
        if (not torch.is_tensor(input_ids) or input_ids.ndim != 2 or input_ids.shape[1] == 0
                or input_ids.dtype not in (torch.long, torch.int)):
            raise PromptError(f"input_ids must be a non-empty (batch, length) tensor of int64 token ids, got "
                              f"{_describe(input_ids)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise PromptError(f"input_ids hold ids outside the vocabulary [0, {vocab}): "
                              f"min {int(input_ids.min())}, max {int(input_ids.max())}")
        x = self.language_model.model.embed_tokens(input_ids.to(self.device))  # (B, T, D)
        is_image = input_ids.to(self.device) == self.config.image_token_index  # (B, T)
        n_tokens = int(is_image.sum())
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values)
        if image_features is None:
            if n_tokens:
                raise PromptError(f"input_ids hold {n_tokens} image tokens (id {self.config.image_token_index}) "
                                  f"but no pixel_values were given")
            return x
        n_img, per_image, D = image_features.shape
        if n_tokens != n_img * per_image:
            raise PromptError(f"image features and image tokens do not match: input_ids hold {n_tokens} image tokens "
                              f"(id {self.config.image_token_index}), pixel_values give {n_img} image(s) x {per_image} "
                              f"features = {n_img * per_image}")
        # images fill the <image> runs in order, row by row over the batch (transformers' masked_scatter)
        return x.masked_scatter(is_image[..., None], image_features.to(x.dtype))

    def new_cache(self, batch_size, max_len):
        return self.language_model.new_cache(batch_size, max_len)

    def forward(self, input_ids, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                logits_to_keep=0, inputs_embeds=None):
        """input_ids (B, T) [+ pixel_values (n_images, 3, H, W)] -> logits (B, T, vocab).

        Positions are 0..T-1 as in transformers' forward (after `cache.length` with a cache).
        With a cache, call once with the prompt (prefill), then with one new token at a time.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if position_ids is not None:
            position_ids = position_ids.to(self.device)
        return self.language_model(inputs_embeds, attention_mask, position_ids, cache, logits_to_keep)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=None, progress=False):
        """Build on the meta device (no random init, no memory), then assign the mmapped weights."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: " + ("expected a checkpoint folder (config.json, *.safetensors, tokenizer "
                                                 "files), got a file" if path.exists() else "no such checkpoint folder"))
        config = LlavaConfig.from_json(path)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device, config.dtype)
        tensors = open_checkpoint(path)  # a corrupt or missing file fails here, before anything is built
        check_layer_counts(config, tensors, path)  # and so does a config claiming other (or 10**9) layers
        try:
            with torch.device("meta"):
                model = cls(config)
        except (RuntimeError, TypeError, OverflowError, ValueError) as e:  # sizes torch cannot even describe
            raise ConfigError(f"{path / 'config.json'}: no model of these sizes can be built ({e})") from None
        load_weights(model, path, device=device, dtype=dtype, progress=progress, tensors=tensors)
        return model.eval()


def resolve_device(device):
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceError(f"device {device!r} is not a device torch knows (expected 'cpu', 'cuda', 'cuda:1', 'mps'): "
                          f"{e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for, but CUDA is not available on this machine "
                          f"(torch {torch.__version__}); use device='cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {str(device)!r} was asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(device)!r} is not supported (expected 'cpu', 'cuda' or 'mps')")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for, but MPS (Apple GPU) is not available on this machine")
    return device


def resolve_dtype(dtype, device, checkpoint_dtype=None):
    """The caller's dtype; by default float32 on CPU (exact, and fast there) and the checkpoint's dtype on a GPU."""
    if dtype is None:
        dtype = checkpoint_dtype if device.type != "cpu" and checkpoint_dtype else "float32"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DeviceError(f"dtype {dtype!r} is not supported (expected float32, float16 or bfloat16)")
        dtype = getattr(torch, DTYPES[dtype])
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise DeviceError(f"dtype {dtype} is not supported (expected float32, float16 or bfloat16)")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use dtype='float16'")
    return dtype


def _describe(x):
    return f"a {x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else f"a {type(x).__name__}"
