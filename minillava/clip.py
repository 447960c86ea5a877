"""The CLIP vision tower (ViT-L/14 at 336 px for LLaVA-1.5).

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision";
matches `CLIPVisionModel` in transformers' models/clip/modeling_clip.py. Module names mirror the
checkpoint keys `vision_tower.vision_model.*`, including CLIP's own typo `pre_layrnorm`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VisionConfig
from .layers import Embedding, Linear


def quick_gelu(x):
    # OpenAI CLIP was trained with this sigmoid approximation of GELU, so the weights expect it
    return x * torch.sigmoid(1.702 * x)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D, P = config.hidden_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(D))
        self.patch_embedding = nn.Conv2d(config.num_channels, D, kernel_size=P, stride=P, bias=False)
        self.position_embedding = Embedding(config.num_patches + 1, D)  # +1 for the class token

    def forward(self, pixel_values):  # (B, 3, H, W), H = W = image_size: LLaVA-1.5 never interpolates positions
        B = pixel_values.shape[0]
        w = self.patch_embedding.weight
        x = self.patch_embedding(pixel_values.to(device=w.device, dtype=w.dtype))  # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, n_patches, D), patches in row-major order
        cls = self.class_embedding.expand(B, 1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + n_patches, D)
        return x + self.position_embedding(torch.arange(x.shape[1], device=x.device))  # (B, 1 + n_patches, D)


class CLIPAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D = config.hidden_size
        self.n_heads, self.head_dim = config.num_attention_heads, D // config.num_attention_heads
        self.q_proj = Linear(D, D)
        self.k_proj = Linear(D, D)
        self.v_proj = Linear(D, D)
        self.out_proj = Linear(D, D)

    def forward(self, x):  # (B, N, D)
        B, N, D = x.shape
        q, k, v = (proj(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, n_heads, N, head_dim)
        y = F.scaled_dot_product_attention(q, k, v)  # every patch sees every patch: no mask
        return self.out_proj(y.transpose(1, 2).reshape(B, N, D))


class CLIPMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)
        self.act = quick_gelu if config.hidden_act == "quick_gelu" else F.gelu

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, n_layers=None):
        """(B, N, D) -> the hidden states [input, after layer 1, ..., after layer n_layers] (all layers by default)."""
        hidden_states = [x]
        for layer in self.layers[:n_layers]:
            x = layer(x)
            hidden_states.append(x)
        return hidden_states


class CLIPVisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        # Loaded (it is in every checkpoint) but never run: LLaVA takes an inner layer's output
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values, n_layers=None):
        """(B, 3, H, W) -> transformers' `hidden_states` tuple as a list: index 0 is the embeddings after
        `pre_layrnorm`, index i the output of encoder layer i (up to n_layers; all by default)."""
        return self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)), n_layers)  # each (B, 1 + n_patches, D)


class CLIPVisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(config)

    def forward(self, pixel_values, layers):
        """Hidden states at the given indices of the (num_hidden_layers + 1)-long hidden_states list.

        LLaVA-1.5 takes index -2 = 23 (the penultimate layer: the paper found the last layer's
        features too focused on the global, contrastive image summary). Layers after the deepest
        requested index are skipped, since nothing reads them.
        """
        n = len(self.vision_model.encoder.layers) + 1
        layers = [i % n for i in layers]  # -2 -> 23 for a 24-layer tower
        hidden_states = self.vision_model(pixel_values, n_layers=max(layers))
        return [hidden_states[i] for i in layers]
