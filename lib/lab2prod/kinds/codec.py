"""What a served model takes over HTTP, and how one request becomes its inputs.

Three kinds, picked from the model:
- image models: the request is the image file's bytes; the guard decodes them and the lab
  transform (the user's own `lab_transform`, or the recipe of the model family) makes the tensor;
- text models (a Hugging Face checkpoint): the request is JSON `{"text": "..."}`; the model's own
  tokenizer makes the ids and mask, padded as the lab padded them, and a text over the model's
  token limit is refused, never silently cut;
- tensor models (`--example-inputs`): the request is JSON of named arrays, one item without the
  batch dimension, `{"input_ids": [...], "attention_mask": [...]}` (`input` for one tensor,
  `input_0`, `input_1`... for a tuple), checked against the lab's names, dtypes and shapes.

The same codec object runs in the lab (without its guard: the lab path of live parity) and in
the TorchServe handler (with it), so the two cannot prepare a request differently. A codec
writes what it needs into the model archive (`archive`) and is rebuilt there (`from_spec`): the
source file of the user's lab transform, or the tokenizer's files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.inputs import call, first_tensor
from lab2prod.kinds import image, tensor, text
from lab2prod.kinds.base import Kind

__all__ = ["KINDS", "kind_of", "codec_for", "from_spec", "answers", "lab_answer", "answer_vector"]

# The registry of kinds: a new kind is one module with a `KIND` and one line here.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (image.KIND, text.KIND, tensor.KIND)}


def kind_of(name: str) -> Kind:
    """The registered kind called `name`."""
    if name not in KINDS:
        raise Lab2ProdError(f"kind {name!r} is not registered; use one of {', '.join(KINDS)} or add it to "
                            "lab2prod.kinds.codec.KINDS")
    return KINDS[name]


def codec_for(loaded, guarded: bool = True, max_bytes: int = 1_000_000, z_limit: float = 5.0):
    """The codec of a loaded model, by its kind: text for a model with a tokenizer, image for an image model
    (its lab transform: the user's, or the family's recipe), tensor otherwise. `guarded` adds the
    input guard with limits from the lab's own inputs (shape, statistics, ranges)."""
    return kind_of(loaded.kind).codec(loaded, guarded, max_bytes, z_limit)


def from_spec(spec: dict, model_dir: str | Path):
    """Rebuild a codec inside the server from the archive's lab2prod.json and files."""
    return kind_of(spec["kind"]).from_spec(spec, Path(model_dir))


def answers(task: str, outputs: torch.Tensor) -> list[dict]:
    """What the server returns per request: top-1 and class probabilities for a classifier, the
    vector for an embedder."""
    outputs = outputs.float().cpu()
    if task == "embedder":
        return [{"embedding": row.tolist()} for row in outputs.reshape(outputs.shape[0], -1)]
    probabilities = torch.softmax(outputs, dim=1)
    return [{"top1": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]


def lab_answer(module, lab, body, task: str) -> torch.Tensor:
    """What the served model should answer for one request body, computed in process through
    the codec `lab`: class probabilities for a classifier, the vector for an embedder."""

    out = first_tensor(call(module, lab(body))).float()[0]
    return out if task == "embedder" else torch.softmax(out, dim=0)


def answer_vector(payload: dict) -> torch.Tensor:
    """The vector in a served answer: probabilities or the embedding."""
    return torch.tensor(payload["embedding"] if "embedding" in payload else payload["probabilities"])



