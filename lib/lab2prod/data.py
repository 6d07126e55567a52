"""Labelled images for the reference models: scikit-learn's handwritten digits rendered as RGB photos.

The 8x8 digits are drawn onto canvases whose size, aspect ratio, ink and paper colours vary,
so a serving bug (a square resize, a wrong channel order, a missing normalization) changes
what the model sees, as it would with real photographs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["DigitImages", "digits_images", "DIGIT_CLASSES", "HELD_OUT_FRACTION", "RENDER_SEED"]

DIGIT_CLASSES = [str(d) for d in range(10)]
HELD_OUT_FRACTION = 0.2
RENDER_SEED = 1234  # fixed: every user of the data sees the same images


@dataclass
class DigitImages:
    """Rendered digit images with labels; `split` is "train" or "test" (held out from training)."""

    images: list[Image.Image]
    labels: np.ndarray
    split: str

    def __len__(self) -> int:
        return len(self.images)


def _render(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Draw one 8x8 digit (values 0..16) as ink on a tinted canvas of random size and shape."""
    short_side = int(rng.integers(28, 64))
    aspect = float(rng.uniform(0.75, 1.5))  # width / height
    if aspect >= 1:
        height, width = short_side, int(round(short_side * aspect))
    else:
        width, height = short_side, int(round(short_side / aspect))
    paper = rng.integers(170, 256, size=3)
    ink = rng.integers(0, 90, size=3)
    box = int(round(short_side * rng.uniform(0.75, 0.95)))
    glyph = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    mask = glyph.resize((box, box), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (width, height), tuple(int(c) for c in paper))
    ink_layer = Image.new("RGB", (box, box), tuple(int(c) for c in ink))
    # Jitter the glyph a little around the centre; the centre crop of the lab transform keeps it.
    max_shift = max(0, (short_side - box) // 2)
    left = (width - box) // 2 + int(rng.integers(-max_shift, max_shift + 1)) // 2
    top = (height - box) // 2 + int(rng.integers(-max_shift, max_shift + 1)) // 2
    canvas.paste(ink_layer, (left, top), mask)
    return canvas


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(
        indices, test_size=HELD_OUT_FRACTION, random_state=0, stratify=labels
    )
    return np.sort(train), np.sort(test)


def digits_images(split: str = "test") -> DigitImages:
    """Return the rendered digits of one split ("train" or "test"), deterministic across calls."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not known; use 'train' or 'test'")
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(RENDER_SEED)
    rendered = [_render(pixels, rng) for pixels in digits.images]
    train, test = _split_indices(digits.target)
    chosen = train if split == "train" else test
    return DigitImages(
        images=[rendered[i] for i in chosen], labels=digits.target[chosen].copy(), split=split
    )
