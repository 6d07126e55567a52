"""Reference images: held-out digits, held-out photo crops, and real photographs with crops of varied aspect."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lab2prod.models.data import digits_images
from lab2prod.models.photos import photo_crops

__all__ = ["photo_images", "photo_crops_of", "parity_images"]


def photo_images() -> list[tuple[str, Image.Image]]:
    """Real colour photographs shipped by scikit-learn and scikit-image (no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    sklearn_photos = load_sample_images()
    named = [(name.rsplit("/", 1)[-1].split(".")[0], Image.fromarray(array))
             for name, array in zip(sklearn_photos.filenames, sklearn_photos.images, strict=False)]
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        named.append((name, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")))
    return named


def photo_crops_of(count: int, seed: int) -> list[tuple[str, Image.Image]]:
    # Whole photographs and crops of varied aspect ratio (0.6 to 1.6), so aspect-ratio bugs show.
    photos = photo_images()
    rng = np.random.default_rng(seed)
    crops = list(photos)
    while len(crops) < count:
        name, photo = photos[int(rng.integers(len(photos)))]
        width, height = photo.size
        aspect = float(rng.uniform(0.6, 1.6))
        crop_h = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
        crop_w = min(width, max(8, int(crop_h * aspect)))
        x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        crops.append((f"{name}[{x0}:{x0 + crop_w},{y0}:{y0 + crop_h}]", photo.crop((x0, y0, x0 + crop_w, y0 + crop_h))))
    return crops[:count]


def parity_images(family: str, max_images: int = 0,
                  seed: int = 0) -> tuple[list[str], list[Image.Image], np.ndarray | None]:
    """(names, images, labels) for a model family: held-out digits with labels for "digits",
    held-out photo crops with labels for "photos" (lab2prod.models.photos), photographs and crops of
    them without labels otherwise. `max_images` 0 means all digits (360), all photo crops (300)
    or 24 photographs."""
    if family == "digits":
        data = digits_images("test")
        count = len(data) if max_images <= 0 else min(max_images, len(data))
        return [f"digit#{i}" for i in range(count)], data.images[:count], np.asarray(data.labels[:count])
    if family == "photos":
        crops = photo_crops("test")
        count = len(crops) if max_images <= 0 else min(max_images, len(crops))
        # Spread over the classes: the crops are stored photograph by photograph.
        picks = np.linspace(0, len(crops) - 1, count).round().astype(int) if count < len(crops) else np.arange(count)
        return [crops.names[i] for i in picks], [crops.images[i] for i in picks], crops.labels[picks]
    crops = photo_crops_of(max_images if max_images > 0 else 24, seed)
    return [name for name, _ in crops], [image for _, image in crops], None
