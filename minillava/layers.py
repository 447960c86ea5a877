"""Building blocks the model files share that are not part of the model's math: how a layer is
built and stored, never what it computes.

`Embedding` is nn.Embedding that skips its random init on the meta device: there the init would only
cost time (torch's meta `normal_` imports torch._dynamo, ~2 s), since a checkpoint overwrites every
weight anyway.
"""
import torch.nn as nn


class Embedding(nn.Embedding):
    def reset_parameters(self):
        if not self.weight.is_meta:
            super().reset_parameters()
