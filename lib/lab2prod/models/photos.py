"""Labelled photographs for the photo reference model (`photo_cnn`): which photograph a crop comes from.

Ten real colour photographs ship inside scikit-learn and scikit-image (no download). A crop is
labelled with the photograph it was cut from. Crops have the aspect ratios uploads really have
(4:3, 3:4, 16:9, 9:16, 1:1) and several scales, so a serving path that squashes them to a
square, or crops where the lab resized, changes what the model sees. Training crops come from
the left half of each photograph and from one set of scales; held-out crops come from the right
half and from the scales in between, so no held-out pixel region or scale was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["PHOTO_CLASSES", "ASPECTS", "TRAIN_SCALES", "TEST_SCALES", "CROPS_PER_PHOTO", "PHOTO_SEED", "PhotoCrops",
           "class_photos", "photo_crops", "other_photographs"]

# The class of a crop is the photograph it comes from.
PHOTO_CLASSES = ["china", "flower", "astronaut", "chelsea", "coffee", "rocket", "hubble", "tissue", "motorcycle",
                 "retina"]
ASPECTS = {"4:3": 4 / 3, "3:4": 3 / 4, "16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}
# A scale is the crop's size relative to the largest crop of its aspect that fits the half photograph.
TRAIN_SCALES = ((0.30, 0.40), (0.50, 0.60), (0.70, 0.80), (0.90, 1.00))
TEST_SCALES = ((0.40, 0.50), (0.60, 0.70), (0.80, 0.90))
CROPS_PER_PHOTO = {"train": 100, "test": 30}
PHOTO_SEED = 4321


@lru_cache(maxsize=1)
def class_photos() -> tuple[tuple[str, Image.Image], ...]:
    """(class name, RGB photograph) for each class, in PHOTO_CLASSES order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    sklearn_photos = load_sample_images()
    by_file = {name.rsplit("/", 1)[-1].split(".")[0]: array
               for name, array in zip(sklearn_photos.filenames, sklearn_photos.images, strict=True)}
    arrays = {
        "china": by_file["china"],
        "flower": by_file["flower"],
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "hubble": skimage.data.hubble_deep_field(),
        "tissue": skimage.data.immunohistochemistry(),
        "motorcycle": skimage.data.stereo_motorcycle()[0],
        "retina": skimage.data.retina(),
    }
    return tuple((name, Image.fromarray(arrays[name]).convert("RGB")) for name in PHOTO_CLASSES)


@dataclass(frozen=True)
class PhotoCrops:
    """Crops of one split with their labels (indices of PHOTO_CLASSES) and where they were cut."""

    images: list
    labels: np.ndarray
    names: list[str]
    split: str

    def __len__(self) -> int:
        return len(self.images)


def _box(width: int, height: int, aspect: float, scale: float, left: bool, rng: np.random.Generator):
    half = width // 2
    x_lo, x_hi = (0, half) if left else (half, width)
    region_w = x_hi - x_lo
    max_w = min(region_w, height * aspect)
    w = max(8, int(round(scale * max_w)))
    h = max(8, min(height, int(round(w / aspect))))
    x0 = x_lo + int(rng.integers(0, region_w - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    return x0, y0, x0 + w, y0 + h


@lru_cache(maxsize=2)
def photo_crops(split: str = "test") -> PhotoCrops:
    """The crops of `split` ("train": left halves, TRAIN_SCALES; "test": right halves,
    TEST_SCALES), deterministic: the same crops and labels on every call and machine."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not known; use 'train' or 'test'")
    rng = np.random.default_rng(PHOTO_SEED + (0 if split == "train" else 1))
    scales = TRAIN_SCALES if split == "train" else TEST_SCALES
    aspects = list(ASPECTS.items())
    images, labels, names = [], [], []
    for label, (name, photo) in enumerate(class_photos()):
        for i in range(CROPS_PER_PHOTO[split]):
            ratio_name, aspect = aspects[i % len(aspects)]
            low, high = scales[(i // len(aspects)) % len(scales)]
            box = _box(photo.width, photo.height, aspect, float(rng.uniform(low, high)), split == "train", rng)
            images.append(photo.crop(box))
            labels.append(label)
            names.append(f"{name}[{box[0]}:{box[2]},{box[1]}:{box[3]}] {ratio_name}")
    return PhotoCrops(images, np.asarray(labels), names, split)


def other_photographs() -> list[Image.Image]:
    """Photographs of another source for drift: scikit-image's grey-level photographs (a camera
    man, the moon, coins, brick, grass, gravel), as RGB crops of the aspect ratios above."""
    import skimage.data

    crops = []
    for name in ("camera", "moon", "coins", "brick", "grass", "gravel"):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        rng = np.random.default_rng(PHOTO_SEED + len(crops))
        for i, aspect in enumerate(ASPECTS.values()):
            crops.append(photo.crop(_box(photo.width, photo.height, aspect, 0.6 + 0.1 * (i % 3), i % 2 == 0, rng)))
    return crops
