"""The LLaVA-1.5 model: CLIP tower -> projector -> image features scattered into the `<image>`
positions of the token embeddings -> Llama decoder -> logits.

Liu et al. 2023, "Visual Instruction Tuning" and "Improved Baselines with Visual Instruction
Tuning". Matches `LlavaForConditionalGeneration` in transformers' models/llava/modeling_llava.py.
The attribute names are the top-level checkpoint keys: `vision_tower`, `multi_modal_projector`,
`language_model`.
"""
import torch
import torch.nn as nn

from .clip import CLIPVisionModel
from .config import LlavaConfig
from .errors import ImageError, PromptError
from .llama import LlamaForCausalLM
from .projector import LlavaMultiModalProjector


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
        """The dtype the model computes in (its large weights may be stored narrower: layers.py)."""
        return self.language_model.model.norm.weight.dtype

    # --- the stages, each callable on its own (notebooks and the `logits` command show them) ---

    def vision_features(self, pixel_values):
        """(n_images, 3, H, W) -> the selected CLIP hidden states, (n_images, n_tokens, D_vision * n_layers)."""
        return self.select_features(self.vision_tower(pixel_values, self.config.feature_layers))

    def select_features(self, selected):
        """The tower's hidden states at config.feature_layers -> what enters the projector."""
        if self.config.vision_feature_select_strategy == "default":
            selected = [h[:, 1:] for h in selected]  # drop the CLS token: 576 patch tokens remain
        return torch.cat(selected, dim=-1)

    def image_features(self, pixel_values):
        """(n_images, 3, H, W) -> projected image features, (n_images, n_tokens, D_text)."""
        return self.multi_modal_projector(self.vision_features(pixel_values))

    def embed(self, input_ids, pixel_values=None, image_features=None):
        """Token embeddings with the image features written into the `<image>` positions, (B, T, D)."""
        n_tokens = check_inputs(self.config, input_ids, pixel_values, image_features)
        x = self.embed_tokens(input_ids)  # (B, T, D)
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values)
        if image_features is None:
            return x
        n_img, per_image, D = image_features.shape
        if n_tokens != n_img * per_image:
            given = "pixel_values give" if pixel_values is not None else "image_features hold"
            raise PromptError(f"image features and image tokens do not match: input_ids hold {n_tokens} image tokens "
                              f"(id {self.config.image_token_index}), {given} {n_img} image(s) x {per_image} "
                              f"features = {n_img * per_image}; give one image per <image> in the prompt, expanded "
                              f"to {per_image} tokens as the processor does")
        is_image = input_ids.to(self.device) == self.config.image_token_index  # (B, T)
        # images fill the <image> runs in order, row by row over the batch (transformers' masked_scatter)
        return x.masked_scatter(is_image[..., None], image_features.to(x.dtype))

    def embed_tokens(self, input_ids):
        """Plain token embeddings, (B, T) -> (B, T, D) in the model's dtype (a table kept in the file's
        dtype gives its rows in that dtype: layers.py); an `<image>` id gets its (untrained) row, as a
        generated token does in transformers."""
        return self.language_model.model.embed_tokens(input_ids.to(self.device)).to(self.dtype)

    def new_cache(self, batch_size, max_len, static=False):
        return self.language_model.new_cache(batch_size, max_len, static=static)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                start_pos=None, logits_to_keep=0, inputs_embeds=None):
        """input_ids (B, T) [+ pixel_values (n_images, 3, H, W)] -> logits (B, T, vocab), or at the positions
        logits_to_keep names (the last n, or a tensor of positions: LlamaForCausalLM.forward).

        Or inputs_embeds (B, T, D) instead of both (from `embed`, or your own).
        Positions are 0..T-1 as in transformers' forward (start_pos..start_pos+T-1 with a cache).
        With a cache, call once with the prompt (start_pos=0: prefill), then with each new token at the
        next position (start_pos = the number of positions written so far).
        """
        if (inputs_embeds is None) == (input_ids is None) or (inputs_embeds is not None and pixel_values is not None):
            raise PromptError("give either input_ids (with pixel_values for the images) or inputs_embeds, not both "
                              "(as transformers' forward); inputs_embeds already hold the image features")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if position_ids is not None:
            position_ids = position_ids.to(self.device)
        return self.language_model(inputs_embeds, attention_mask, position_ids, cache, start_pos, logits_to_keep)

    @torch.no_grad()
    def stages(self, input_ids, pixel_values=None, attention_mask=None):
        """Every stage of one forward pass, by the names `minillava logits` saves and `minillava compare` reads:
        input_ids, attention_mask, pixel_values, vision_hidden_states.<layer> (the raw selected layers, CLS token
        included), vision_features (what enters the projector), image_features, inputs_embeds, logits."""
        stages = {"input_ids": input_ids}
        if attention_mask is not None:
            stages["attention_mask"] = attention_mask
        image_features = None
        if pixel_values is not None:
            stages["pixel_values"] = pixel_values
            pixel_values = pixel_values.to(self.device)
            hidden = self.vision_tower(pixel_values, self.config.feature_layers)  # the tower runs once
            for layer, h in zip(self.config.feature_layers, hidden):
                stages[f"vision_hidden_states.{layer}"] = h
            stages["vision_features"] = self.select_features(hidden)
            stages["image_features"] = image_features = self.multi_modal_projector(stages["vision_features"])
        stages["inputs_embeds"] = self.embed(input_ids, image_features=image_features)
        stages["logits"] = self(inputs_embeds=stages["inputs_embeds"], attention_mask=attention_mask)
        return stages


# --- input checks, once per call, before any math: on the ids where they are (the processor's are on the
# CPU, so a GPU is never asked to synchronise for them) --------------------------------------------------

def check_inputs(config, input_ids, pixel_values=None, image_features=None):
    """A PromptError or ImageError naming what is wrong, else the number of <image> tokens in input_ids
    (None for ids on a GPU without images: a text-only step there costs no synchronisation)."""
    if (not torch.is_tensor(input_ids) or input_ids.ndim != 2 or input_ids.shape[1] == 0
            or input_ids.dtype not in (torch.long, torch.int)):
        raise PromptError(f"input_ids must be a non-empty (batch, length) tensor of int64 token ids, got "
                          f"{_describe(input_ids)}")
    if pixel_values is not None:
        v = config.vision_config
        expected = (v.num_channels, v.image_size, v.image_size)
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ImageError(f"pixel_values are {_describe(pixel_values)}, the vision tower expects (n_images, "
                             f"{', '.join(map(str, expected))}) (vision_config.image_size; images preprocessed for "
                             f"another model?)")
    has_images = pixel_values is not None or image_features is not None
    if input_ids.device.type == "cpu":
        vocab = config.text_config.vocab_size
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab:
            raise PromptError(f"input_ids hold ids outside the vocabulary [0, {vocab}): min {lo}, max {hi}")
    elif not has_images:
        return None
    n_tokens = int((input_ids == config.image_token_index).sum())
    if n_tokens and not has_images:
        raise PromptError(f"input_ids hold {n_tokens} image tokens (id {config.image_token_index}) "
                          f"but no pixel_values were given")
    return n_tokens


def _describe(x):
    return f"a {x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else f"a {type(x).__name__}"
