"""Small user-style models for `--model package.module:factory`, including one that traces wrong.

    lab2prod run --only export --model lab2prod.examples:tabular_mlp \
        --example-inputs lab2prod.examples:tabular_inputs
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NUM_FEATURES", "tabular_inputs", "tabular_mlp", "gated_net"]

NUM_FEATURES = 20


def tabular_inputs(batch_size: int, seed: int) -> torch.Tensor:
    """Standardized tabular rows: `batch_size` x 20 float32 features drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, NUM_FEATURES, generator=generator)


def tabular_mlp() -> nn.Module:
    """A non-image classifier: 20 features, 3 classes."""
    return nn.Sequential(nn.Linear(NUM_FEATURES, 64), nn.ReLU(), nn.Linear(64, 3))


class GatedNet(nn.Module):
    """Picks a head from the data: a trace records one branch and silently serves it forever."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(NUM_FEATURES, 32)
        self.positive_head = nn.Linear(32, 3)
        self.negative_head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.body(x))
        if x.mean() > 0:  # data-dependent control flow
            return self.positive_head(hidden)
        return self.negative_head(hidden)


def gated_net() -> nn.Module:
    """The data-dependent model; exported by trace it must fail its parity gate."""
    return GatedNet()
