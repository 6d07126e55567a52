"""The lab transforms: how each model family turns an image into the tensor it was trained on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

__all__ = [
    "DIGITS_INPUT_SIZE",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Recipe",
    "DIGITS_RECIPE",
    "IMAGENET_RECIPE",
    "PHOTO_INPUT_SIZE",
    "PHOTO_MEAN",
    "PHOTO_STD",
    "PHOTO_RECIPE",
    "photo_lab_transform",
    "recipe_transform",
    "recipe_of",
    "digits_lab_transform",
    "imagenet_lab_transform",
]

DIGITS_INPUT_SIZE = 32
# Per-channel mean and std of the rendered training digits after resize + crop + scale to [0, 1].
# Recomputed from the data by tests/test_transforms.py, which fails if the rendering changes.
DIGITS_MEAN = (0.6900, 0.6892, 0.6882)
DIGITS_STD = (0.2301, 0.2298, 0.2295)
# The photo reference model's recipe: shorter side to 128, centre-crop 112, the training crops'
# per-channel mean and std (recomputed from the crops by tests/test_photos.py).
PHOTO_INPUT_SIZE = 112
PHOTO_MEAN = (0.4777, 0.3475, 0.3022)
PHOTO_STD = (0.3102, 0.2170, 0.2167)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Recipe:
    """What a lab transform does: resize the shorter side to `resize` pixels with `interpolation`,
    centre-crop `crop` x `crop`, scale to float [0, 1], normalize with `mean` and `std`."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR


DIGITS_RECIPE = Recipe(DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE, DIGITS_MEAN, DIGITS_STD)
IMAGENET_RECIPE = Recipe(256, 224, IMAGENET_MEAN, IMAGENET_STD)
PHOTO_RECIPE = Recipe(128, PHOTO_INPUT_SIZE, PHOTO_MEAN, PHOTO_STD)


def recipe_transform(
    recipe: Recipe,
    *,
    interpolation: InterpolationMode | None = None,
    antialias: bool = True,
    square: bool = False,
    scale: bool = True,
    normalize: bool = True,
) -> v2.Compose:
    """The transform a recipe describes. The keyword arguments reproduce serving mistakes:
    another interpolation, no antialias, a square resize without crop, no scaling, no Normalize."""
    mode = interpolation or recipe.interpolation
    size = [recipe.crop, recipe.crop] if square else recipe.resize
    steps = [v2.ToImage(), v2.Resize(size, interpolation=mode, antialias=antialias)]
    if not square:
        steps.append(v2.CenterCrop(recipe.crop))
    steps.append(v2.ToDtype(torch.float32, scale=scale))
    if normalize:
        steps.append(v2.Normalize(mean=list(recipe.mean), std=list(recipe.std)))
    return v2.Compose(steps)


def recipe_of(transform) -> Recipe | None:
    """Read the recipe out of a torchvision Compose (v1 or v2) with Resize(int), CenterCrop and
    Normalize; None when the transform is something else (its bugs cannot be derived then)."""
    steps = getattr(transform, "transforms", None)
    if not steps:
        return None
    found = {type(step).__name__: step for step in steps}
    resize, crop, norm = found.get("Resize"), found.get("CenterCrop"), found.get("Normalize")
    if resize is None or crop is None or norm is None:
        return None
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    crop_size = crop.size[0] if isinstance(crop.size, (list, tuple)) else crop.size
    if not isinstance(size, int) or (isinstance(crop.size, (list, tuple)) and len(set(crop.size)) != 1):
        return None
    return Recipe(int(size), int(crop_size), tuple(float(m) for m in norm.mean),
                  tuple(float(s) for s in norm.std), resize.interpolation)


def digits_lab_transform(normalize: bool = True) -> v2.Compose:
    """Resize the shorter side to 32, centre-crop 32x32, scale to float [0, 1], normalize."""
    return recipe_transform(DIGITS_RECIPE, normalize=normalize)


def imagenet_lab_transform() -> v2.Compose:
    """The torchvision ImageNet recipe: Resize(256), CenterCrop(224), scale, ImageNet mean/std."""
    return recipe_transform(IMAGENET_RECIPE)


def photo_lab_transform(normalize: bool = True) -> v2.Compose:
    """The photo reference model's lab transform: Resize(128), CenterCrop(112), scale, normalize."""
    return recipe_transform(PHOTO_RECIPE, normalize=normalize)
