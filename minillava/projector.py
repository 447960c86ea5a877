"""The multimodal projector: maps CLIP features into the decoder's embedding space.

LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning", section 3.3, "Scaling the
Data and Model") replaced LLaVA's single linear layer with this two-layer MLP ("mlp2x_gelu").
Matches `LlavaMultiModalProjector` in transformers' models/llava/modeling_llava.py.
"""
import torch.nn as nn
import torch.nn.functional as F

from .config import LlavaConfig
from .layers import Linear


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        # a list of feature layers is concatenated along the channel axis before projecting
        d_in = config.vision_config.hidden_size * len(config.feature_layers)
        d_out = config.text_config.hidden_size
        self.linear_1 = Linear(d_in, d_out, bias=config.multimodal_projector_bias)
        self.linear_2 = Linear(d_out, d_out, bias=config.multimodal_projector_bias)

    def forward(self, features):  # (n_images, n_tokens, d_in)
        # exact erf GELU here (transformers' ACT2FN["gelu"]), unlike the tower's quick_gelu
        return self.linear_2(F.gelu(self.linear_1(features)))  # (n_images, n_tokens, d_out)
