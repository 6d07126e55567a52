"""The lab transforms: how each model family turns an image into the tensor it was trained on."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

__all__ = [
    "DIGITS_INPUT_SIZE",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "digits_lab_transform",
    "imagenet_lab_transform",
]

DIGITS_INPUT_SIZE = 32
# Per-channel mean and std of the rendered training digits after resize + crop + scale to [0, 1].
# Recomputed from the data by tests/test_transforms.py, which fails if the rendering changes.
DIGITS_MEAN = (0.6900, 0.6892, 0.6882)
DIGITS_STD = (0.2301, 0.2298, 0.2295)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def digits_lab_transform(normalize: bool = True) -> v2.Compose:
    """Resize the shorter side to 32, centre-crop 32x32, scale to float [0, 1], normalize."""
    steps = [
        v2.ToImage(),
        v2.Resize(DIGITS_INPUT_SIZE, antialias=True),
        v2.CenterCrop(DIGITS_INPUT_SIZE),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(v2.Normalize(mean=DIGITS_MEAN, std=DIGITS_STD))
    return v2.Compose(steps)


def imagenet_lab_transform() -> v2.Compose:
    """The torchvision ImageNet recipe: Resize(256), CenterCrop(224), scale, ImageNet mean/std."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
