"""A tiny study, registered in the tests the way README's "Add a study" says: are the model's
outputs finite on a batch of its own inputs?"""

from __future__ import annotations

import torch

from lab2prod.core.results import gate
from lab2prod.models.load import load_model

__all__ = ["evaluate"]


def evaluate(model: str, batch_size: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """({"finite", "shape"}, [gate "sanity:finite"]) for `batch_size` inputs of `model`."""
    loaded = load_model(model, seed=seed)
    with torch.no_grad():
        output = loaded.module(loaded.make_inputs(batch_size, seed))
    finite = bool(torch.isfinite(output).all())
    values = {"finite": finite, "shape": list(output.shape)}
    return values, [gate("sanity:finite", finite, finite, True,
                         "every output is finite" if finite else "the model returned NaN or Inf")]
