"""The image kind: a request is an image file's bytes; what clients send, the codec that turns the bytes
into the lab's tensor (the lab transform itself, behind the input guard), and hostile images."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab2prod.core.errors import Lab2ProdError
from lab2prod.kinds.base import Kind, archive_source, guard_fields, imported_transform, raw_body
from lab2prod.kinds.guard import InputGuard, lab_input_stats
from lab2prod.kinds.image_bugs import BUGS
from lab2prod.kinds.preprocess import ServingPath, decode_request, lab_transform_for

__all__ = ["ImageCodec", "CLIENTS", "png_bytes", "encode_request", "bad_inputs", "image_features", "KIND"]


EXIF_ORIENTATION = 0x0112


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _exif_rotated(image: Image.Image) -> tuple[bytes, Image.Image]:
    # A phone stores the sensor's pixels and a tag saying how to turn them: orientation 6 means
    # "rotate 90 degrees clockwise to display". Pixels are stored turned the other way.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return png_bytes(image.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()), image


def _encoded(image: Image.Image, mode_image: Image.Image) -> tuple[bytes, Image.Image]:
    return png_bytes(mode_image), mode_image.convert("RGB")


CLIENTS: dict[str, tuple[str, Callable[[Image.Image], tuple[bytes, Image.Image]]]] = {
    "rgb": ("RGB PNG: what the lab loaded", lambda im: (png_bytes(im), im)),
    "grayscale": ("8-bit grayscale PNG (scanners, document apps)", lambda im: _encoded(im, im.convert("L"))),
    "rgba": ("RGBA PNG (screenshots, design exports)", lambda im: _encoded(im, im.convert("RGBA"))),
    "palette": ("palette PNG, 256 colours (web-optimised images)",
                lambda im: _encoded(im, im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))),
    "exif_rotated": ("phone photo: pixels stored turned, EXIF orientation 6", _exif_rotated),
}


def encode_request(image: Image.Image, client: str) -> tuple[bytes, Image.Image]:
    """What a `client` sends for `image` (the request bytes), and what the lab's loader makes of
    those bytes (the image the lab path sees: orientation applied, converted to RGB)."""
    if client not in CLIENTS:
        raise Lab2ProdError(f"client {client!r} is not known; use one of {', '.join(CLIENTS)}")
    return CLIENTS[client][1](image.convert("RGB"))


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    # A valid PNG header declaring 10^10 pixels with a tiny compressed body: decoding it would
    # need tens of GB. Built by hand so that making it costs nothing.
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def bad_inputs(good: Image.Image, max_bytes: int) -> list[tuple[str, object]]:
    """(name, payload) of hostile or broken inputs: bytes for the decoder, a tensor for the tensor
    checks. `good` is a real image the broken ones are made from."""
    jpeg = io.BytesIO()
    good.convert("RGB").save(jpeg, format="JPEG", quality=90)
    cmyk = io.BytesIO()
    good.convert("CMYK").save(cmyk, format="JPEG")
    gif = io.BytesIO()
    frames = [good.convert("P"), good.rotate(90).convert("P")]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    apng = png_bytes(good.convert("RGB"), save_all=True, append_images=[good.rotate(90).convert("RGB")])
    sixteen = Image.fromarray((np.asarray(good.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    nan = torch.full((3, 32, 32), float("nan"))
    return [
        ("empty body", b""),
        ("text", b"{\"image\": \"not really\"}"),
        ("truncated JPEG", jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
        ("PNG bomb (100000x100000 declared)", _png_bomb()),
        ("1x1 image", png_bytes(Image.new("RGB", (1, 1)))),
        ("100000x1 image", png_bytes(Image.new("L", (100_000, 1)))),
        ("CMYK JPEG", cmyk.getvalue()),
        ("16-bit PNG", png_bytes(sixteen)),
        ("animated GIF", gif.getvalue()),
        ("animated PNG (2 frames)", apng),
        ("oversize body", b"\x89PNG\r\n\x1a\n" + b"\0" * (max_bytes + 1)),
        ("NaN tensor", nan),
    ]


class ImageCodec:
    """Image bytes -> a batch of one tensor: decoded like the lab (EXIF orientation, RGB), then the
    lab transform object itself; with a guard, the bytes and the tensor are checked."""

    kind, suffix, content_type = "image", ".png", "application/octet-stream"

    def __init__(self, transform, guard: InputGuard | None = None, family: str = "", transform_spec: str = ""):
        self.transform, self.guard, self.family, self.transform_spec = transform, guard, family, transform_spec
        self.path = ServingPath(transform, guard)

    def __call__(self, body) -> torch.Tensor:
        if isinstance(body, torch.Tensor):  # a tensor payload: only the tensor checks apply
            return (self.guard.check_tensor(body) if self.guard else body).unsqueeze(0)
        return self.path(raw_body(body)).unsqueeze(0)

    def archive(self, work: Path) -> tuple[dict, list[Path]]:
        spec = {"kind": self.kind, "family": self.family, "guard": guard_fields(self.guard)}
        files = []
        if self.transform_spec:
            spec["transform"], files = archive_source(self.transform_spec, work)
        return spec, files

    def hostile(self, max_bytes: int, good: bytes) -> list[tuple[str, object]]:
        return bad_inputs(decode_request(good), max_bytes)


def codec_for_model(loaded, guarded: bool = True, max_bytes: int = 1_000_000, z_limit: float = 5.0) -> ImageCodec:
    """The image codec of an image model: its lab transform (the user's, or the family's recipe), and
    a guard with the shape and pixel statistics of the lab's own inputs."""
    transform, _ = lab_transform_for(loaded.family, loaded.lab_transform)
    guard = InputGuard(max_bytes=max_bytes, expected_shape=tuple(loaded.input_shape), z_limit=z_limit,
                       lab_stats=lab_input_stats(loaded.make_inputs(256, 0, "train"))) if guarded else None
    return ImageCodec(transform, guard, loaded.family, loaded.lab_transform)


def codec_from_spec(spec: dict, model_dir: Path) -> ImageCodec:
    """The image codec rebuilt inside the server: the user's transform from the archive, or the family's recipe."""
    guard = spec.get("guard")
    if guard and guard.get("expected_shape") is not None:
        guard = {**guard, "expected_shape": tuple(guard["expected_shape"]),
                 "allowed_formats": tuple(guard["allowed_formats"]), "allowed_modes": tuple(guard["allowed_modes"]),
                 "value_range": tuple(guard["value_range"])}
    transform_spec = (spec.get("transform") or {}).get("spec", "")
    if transform_spec:
        transform = imported_transform(spec["transform"], model_dir)
    else:
        transform, _ = lab_transform_for(spec["family"])
    return ImageCodec(transform, InputGuard(**guard) if guard else None, spec["family"], transform_spec)


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Held-out images as a client sends them: PNG bytes."""
    return [(name, encode_request(image, "rgb")[0]) for name, image in loaded.examples(count, seed)]


def image_features(images: list[Image.Image]) -> np.ndarray:
    """Per image: brightness (mean), contrast (std) of the grey levels, width, height, aspect."""
    rows = []
    for image in images:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        rows.append([grey.mean(), grey.std(), image.width, image.height, image.width / image.height])
    return np.asarray(rows, dtype=np.float64)


KIND = Kind("image", "image file bytes (PNG, JPEG)", codec_for_model, codec_from_spec, request_bodies, tuple(BUGS),
            image_features)
