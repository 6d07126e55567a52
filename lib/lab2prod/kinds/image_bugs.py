"""The image kind's catalog of real serving bugs: each one a serving path that turns request bytes into
a tensor as a real service got it wrong (resized, scaled, decoded or converted differently from the
lab), with where it happens and the client encoding that exposes it. Parity replays them on the same
requests as the lab path; drift shows what each does to the monitored inputs."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode, v2

from lab2prod.core.errors import Lab2ProdError
from lab2prod.kinds.transforms import Recipe, recipe_transform

__all__ = ["Bug", "BUGS", "bug_names", "PARTS", "composed"]


def _pil(data: bytes, exif: bool = True, convert: bool = True) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if exif:
        image = ImageOps.exif_transpose(image)
    return image.convert("RGB") if convert else image


def _hwc_array(data: bytes) -> torch.Tensor:
    # The handler idiom: np.asarray(Image.open(...)) then HWC -> CHW, with no mode conversion.
    array = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        raise Lab2ProdError("the OpenCV bugs need opencv-python-headless; pip install -r requirements.txt") from None
    return cv2


def _cv2_decode(data: bytes) -> np.ndarray:
    cv2 = _cv2()
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # BGR, HWC, uint8


def _bgr_order(data: bytes, r: Recipe) -> torch.Tensor:
    return recipe_transform(r)(Image.fromarray(_cv2_decode(data)))


def _opencv_resize(data: bytes, r: Recipe) -> torch.Tensor:
    cv2 = _cv2()
    rgb = cv2.cvtColor(_cv2_decode(data), cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    factor = r.resize / min(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)  # no antialias when shrinking
    top, left = (resized.shape[0] - r.crop) // 2, (resized.shape[1] - r.crop) // 2
    crop = resized[max(0, top):max(0, top) + r.crop, max(0, left):max(0, left) + r.crop]
    tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255.0
    return v2.Normalize(mean=list(r.mean), std=list(r.std))(tensor)


def _double_scaling(data: bytes, r: Recipe) -> torch.Tensor:
    scaled = recipe_transform(r, normalize=False)(_pil(data)) / 255.0
    return v2.Normalize(mean=list(r.mean), std=list(r.std))(scaled)


def _jpeg_recompressed(data: bytes, r: Recipe, quality: int = 30) -> torch.Tensor:
    buffer = io.BytesIO()
    _pil(data).save(buffer, format="JPEG", quality=quality)
    return recipe_transform(r)(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _palette_as_indices(data: bytes, r: Recipe) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(data)))
    if array.ndim == 2:  # the usual "grayscale fix": repeat the one channel three times
        array = np.stack([array] * 3, axis=-1)
    return recipe_transform(r)(Image.fromarray(array))


@dataclass(frozen=True)
class Bug:
    """A real serving mistake: `fn(request_bytes, recipe) -> tensor`, tried on what `client` sends."""

    name: str
    client: str
    what: str  # what goes wrong, in one line
    where: str  # where it happens in practice, in one line
    fn: Callable[[bytes, Recipe], torch.Tensor] = field(repr=False)

    def path(self, recipe: Recipe) -> Callable[[bytes], torch.Tensor]:
        """The buggy serving path for a model whose lab transform follows `recipe`."""
        return lambda data: self.fn(data, recipe)


BUGS: list[Bug] = [
    Bug("motivating_case", "rgb", "resized to a square and divided by 255, no Normalize",
        "the classic hand-written handler: img.resize((224, 224)); np.asarray(img) / 255",
        lambda d, r: recipe_transform(r, square=True, normalize=False)(_pil(d))),
    Bug("square_resize", "rgb", "resized straight to crop x crop, aspect ratio ignored, no centre crop",
        "Resize((224, 224)) instead of Resize(256) + CenterCrop(224)",
        lambda d, r: recipe_transform(r, square=True)(_pil(d))),
    Bug("missing_normalize", "rgb", "the mean/std Normalize step left out",
        "ToTensor() alone in the service; the lab had Normalize(mean, std)",
        lambda d, r: recipe_transform(r, normalize=False)(_pil(d))),
    Bug("bgr_channel_order", "rgb", "red and blue swapped",
        "cv2.imdecode/cv2.imread return BGR; passed on without cvtColor",
        _bgr_order),
    Bug("uint8_not_scaled", "rgb", "pixels stay 0..255 instead of 0..1 before Normalize",
        "ToDtype(torch.float32) without scale=True, or .float() on a uint8 tensor",
        lambda d, r: recipe_transform(r, scale=False)(_pil(d))),
    Bug("double_scaling", "rgb", "pixels divided by 255 twice",
        "ToTensor() (already 0..1) followed by a manual / 255",
        _double_scaling),
    Bug("opencv_resize", "rgb", "OpenCV bilinear resize, no antialias, instead of the lab's resize",
        "cv2.resize(img, size) in a C++ or Python service; it does not antialias when shrinking",
        _opencv_resize),
    Bug("tensor_resize_no_antialias", "rgb", "tensor resize with antialias=False",
        "F.interpolate or an old torchvision default on tensors; aliasing when shrinking",
        lambda d, r: recipe_transform(r, antialias=False)(_pil(d))),
    Bug("nearest_interpolation", "rgb", "nearest-neighbour resize",
        "a default of Image.resize in old Pillow, or of many GPU and C++ resizers",
        lambda d, r: recipe_transform(r, interpolation=InterpolationMode.NEAREST)(_pil(d))),
    Bug("bicubic_interpolation", "rgb", "bicubic resize where the lab used bilinear",
        "a 'better quality' resize chosen in the service, or timm/TF defaults",
        lambda d, r: recipe_transform(r, interpolation=InterpolationMode.BICUBIC)(_pil(d))),
    Bug("jpeg_recompressed", "rgb", "image re-encoded as JPEG at quality 30 before inference",
        "an upload proxy, CDN or storage step that recompresses to save bytes",
        _jpeg_recompressed),
    Bug("exif_orientation_ignored", "exif_rotated", "phone photos seen on their side",
        "Image.open(...) without ImageOps.exif_transpose; browsers apply the tag, servers don't",
        lambda d, r: recipe_transform(r)(_pil(d, exif=False))),
    Bug("grayscale_not_converted", "grayscale", "a 2-D array where HWC was expected: the request fails",
        "np.asarray(Image.open(f)).transpose(2, 0, 1) without .convert('RGB')",
        lambda d, r: recipe_transform(r)(_hwc_array(d))),
    Bug("rgba_not_converted", "rgba", "four channels reach Normalize/the model: the request fails",
        "np.asarray(Image.open(f)) on a PNG with alpha, no .convert('RGB')",
        lambda d, r: recipe_transform(r)(_hwc_array(d))),
    Bug("palette_as_indices", "palette", "palette indices read as pixel values",
        "np.asarray on a 'P' mode PNG, then the one channel repeated to make RGB",
        _palette_as_indices),
]


def bug_names() -> list[str]:
    return [bug.name for bug in BUGS]


# What each composable bug changes in the lab's path: how the bytes are decoded (exif, bgr) or a keyword of
# recipe_transform. A service can make two of them at once (squash to a square and skip Normalize); `composed`
# builds that service's path, so a diagnosis can name both mistakes.
PARTS: dict[str, dict] = {
    "square_resize": {"square": True},
    "missing_normalize": {"normalize": False},
    "uint8_not_scaled": {"scale": False},
    "tensor_resize_no_antialias": {"antialias": False},
    "nearest_interpolation": {"interpolation": InterpolationMode.NEAREST},
    "bicubic_interpolation": {"interpolation": InterpolationMode.BICUBIC},
    "exif_orientation_ignored": {"exif": False},
    "bgr_channel_order": {"bgr": True},
}
_DECODE = ("exif", "bgr")


def composed(first: Bug, second: Bug) -> Bug | None:
    """One service making both mistakes, as one bug named "first + second"; None when the two cannot happen
    together (two resize kernels, OpenCV's decode with Pillow's EXIF handling) or either is not composable."""
    a, b = PARTS.get(first.name), PARTS.get(second.name)
    if a is None or b is None or first.name == second.name or set(a) & set(b) or set(_DECODE) <= {*a, *b}:
        return None
    if {*a, *b} >= {"antialias", "interpolation"} and InterpolationMode.NEAREST in (a.get("interpolation"),
                                                                                  b.get("interpolation")):
        return None  # nearest-neighbour never antialiases: the pair is nearest alone
    clients = {first.client, second.client} - {"rgb"}
    if len(clients) > 1:
        return None
    parts = {**a, **b}
    options = {k: v for k, v in parts.items() if k not in _DECODE}

    def fn(data: bytes, r: Recipe) -> torch.Tensor:
        image = Image.fromarray(_cv2_decode(data)) if parts.get("bgr") else _pil(data, exif=parts.get("exif", True))
        return recipe_transform(r, **options)(image)

    return Bug(f"{first.name} + {second.name}", clients.pop() if clients else "rgb",
               f"{first.what}, and {second.what}", f"{first.where}; and {second.where}", fn)
