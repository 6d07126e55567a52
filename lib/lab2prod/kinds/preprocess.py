"""The serving path: raw request bytes to the model's input tensor, through the lab transform object."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.imports import import_object
from lab2prod.kinds.transforms import DIGITS_RECIPE, IMAGENET_RECIPE, PHOTO_RECIPE, Recipe, recipe_of, recipe_transform

__all__ = ["decode_request", "ServingPath", "check_lab_transform", "check_serving_transform", "lab_transform_for",
           "load_transform"]


def decode_request(data: bytes) -> Image.Image:
    """Decode request bytes as the lab loaded its files: EXIF orientation applied, converted to RGB.

    Raises Lab2ProdError for empty or undecodable bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise Lab2ProdError("request body is empty; send the image file's bytes")
    try:
        image = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise Lab2ProdError(f"request body ({len(data)} bytes) is not a readable image: {exc}") from None


class ServingPath:
    """bytes -> tensor: decode like the lab, then apply the lab transform object itself (not a copy).

    A server imports this instead of re-implementing preprocessing, so the lab and the service
    cannot drift apart. With a `guard` (lab2prod.kinds.guard.InputGuard), the bytes are checked and
    decoded by it and the tensor is checked after the transform; a refusal raises
    lab2prod.kinds.guard.Rejected.
    """

    def __init__(self, lab_transform: Callable[[Image.Image], torch.Tensor], guard=None):
        self.lab_transform = lab_transform
        self.guard = guard

    def __call__(self, data: bytes) -> torch.Tensor:
        if self.guard is None:
            return self.lab_transform(decode_request(data))
        return self.guard.check_tensor(self.lab_transform(self.guard.check_bytes(data)))


def load_transform(spec: str, what: str) -> Callable:
    """Import a user transform given as package.module:callable."""

    transform = import_object(spec, what)
    if not callable(transform):
        raise Lab2ProdError(f"{what} {spec!r} is {type(transform).__name__}, not callable")
    return transform


def check_lab_transform(spec: str) -> Callable:
    """The user's lab transform (PIL image -> tensor), imported; a clear error when it is not."""
    return load_transform(spec, "lab_transform")


def check_serving_transform(spec: str) -> Callable:
    """The serving transform under test (request bytes -> tensor), imported; a clear error when it is not."""
    return load_transform(spec, "serving_transform")


def lab_transform_for(family: str, spec: str = "") -> tuple[Callable, Recipe | None]:
    """The lab transform of a model family ("digits", "photos" or "imagenet"), or the user's `spec`
    (package.module:callable taking a PIL image), with the recipe read from it when possible."""
    if spec:
        transform = load_transform(spec, "lab_transform")
        return transform, recipe_of(transform)
    recipes = {"digits": DIGITS_RECIPE, "photos": PHOTO_RECIPE, "imagenet": IMAGENET_RECIPE}
    if family not in recipes:
        raise Lab2ProdError(
            f"model family {family!r} has no image transform; preprocessing parity needs an image model "
            "(or pass lab_transform=package.module:callable)")
    recipe = recipes[family]
    return recipe_transform(recipe), recipe
