"""A tiny study, registered in the tests the way README's "Add a study" says: are the model's
outputs finite on a batch of its own inputs?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lab2prod.core.results import gate
from lab2prod.core.schema import Results, described
from lab2prod.models.load import load_model

__all__ = ["SanityResults", "evaluate"]


@dataclass(kw_only=True)
class SanityResults(Results):
    """What the notebook records under results/sanity.json."""

    study: ClassVar[str] = "sanity"

    finite: bool = described("whether every output is finite")
    shape: list = described("the shape of the model's output")


def evaluate(model: str, batch_size: int, seed: int = 0) -> tuple[SanityResults, list[dict]]:
    """(SanityResults, [gate "sanity:finite"]) for `batch_size` inputs of `model`."""
    loaded = load_model(model, seed=seed)
    with torch.no_grad():
        output = loaded.module(loaded.make_inputs(batch_size, seed))
    finite = bool(torch.isfinite(output).all())
    values = SanityResults(finite=finite, shape=list(output.shape))
    return values, [gate("sanity:finite", finite, finite, True,
                         "every output is finite" if finite else "the model returned NaN or Inf")]
