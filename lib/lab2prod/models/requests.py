"""What clients send for a model: held-out images, texts or tensor items, as request bodies."""

from __future__ import annotations

import json

from lab2prod.core.inputs import draw_indices
from lab2prod.kinds.image import encode_request
from lab2prod.kinds.tensor import named_tensors
from lab2prod.models.hf import SAMPLE_TEXTS
from lab2prod.models.images import parity_images

__all__ = ["request_bodies"]


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, body) of what clients send for this model: held-out images as PNG bytes (the user's
    images with --data), texts as JSON (the user's texts, or the bundled sample), or tensor items
    as JSON of named arrays."""

    if loaded.text_path is not None:
        texts = list(loaded.data.items) if loaded.data is not None and loaded.data.kind == "texts" else SAMPLE_TEXTS
        picks = draw_indices(len(texts), min(count, len(texts)), seed, "test")
        return [(f"text#{i}", json.dumps({"text": texts[i]}).encode()) for i in picks]
    if loaded.takes_images:
        if loaded.data is not None and loaded.data.kind == "images":
            picks = draw_indices(len(loaded.data), min(count, len(loaded.data)), seed, "test")
            named = [(f"{loaded.data.path}#{i}", loaded.data.items[i]) for i in picks]
        else:
            names, images, _ = parity_images(loaded.family, count, seed)
            named = list(zip(names, images, strict=True))
        return [(name, encode_request(image, "rgb")[0]) for name, image in named]
    sample = loaded.make_inputs(count, seed, "test")
    rows = named_tensors(sample)
    return [(f"item#{i}", json.dumps({name: t[i].tolist() for name, t in rows.items()}).encode())
            for i in range(count)]
