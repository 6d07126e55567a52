"""The input guard: what a served handler checks before a request reaches the model, each refusal with a reason code."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["Rejected", "InputGuard", "MAGIC", "sniff_format", "lab_input_stats", "read_json", "TextGuard",
           "TensorGuard"]

# Formats by their first bytes (magic numbers), never by a file name or a Content-Type.
MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}


class Rejected(ValueError):
    """A refused input: `code` is stable (for metrics and clients), `message` says what to fix."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes, or None."""
    for magic, name in MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def lab_input_stats(tensors: torch.Tensor) -> dict:
    """Mean and std over lab inputs of each image's per-channel mean: what the z-score screen
    compares a request with."""
    means = tensors.float().mean(dim=(2, 3))
    return {"mean": means.mean(0).tolist(), "std": means.std(0).clamp_min(1e-6).tolist()}


@dataclass
class InputGuard:
    """Checks applied in order: size, format by magic bytes, pixel count before decoding
    (decompression bombs), frames, mode, dimensions, a full decode (truncated or corrupt data),
    then on the tensor: shape, NaN/Inf, range, and a z-score screen against the lab's inputs."""

    max_bytes: int = 1_000_000
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG")
    max_pixels: int = 4_000_000
    min_side: int = 8
    max_aspect: float = 8.0
    allowed_modes: tuple[str, ...] = ("RGB", "RGBA", "L", "P", "LA")
    expected_shape: tuple[int, ...] | None = None
    value_range: tuple[float, float] = (-10.0, 10.0)
    lab_stats: dict | None = None
    z_limit: float = 5.0

    def check_bytes(self, data: bytes) -> Image.Image:
        """Decode `data` into an RGB image, or raise Rejected with a reason code."""
        if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
            raise Rejected("empty", "the request body is empty; send the image file's bytes")
        if len(data) > self.max_bytes:
            raise Rejected("too_large", f"{len(data)} bytes is over the {self.max_bytes}-byte limit; "
                                        "send a smaller image")
        fmt = sniff_format(bytes(data[:16]))
        if fmt not in self.allowed_formats:
            raise Rejected("format", f"the first bytes are {'not an image' if fmt is None else fmt}; "
                                     f"send {' or '.join(self.allowed_formats)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))  # reads the header only
                width, height = image.size
                if width * height > self.max_pixels:
                    raise Rejected("too_many_pixels", f"{width}x{height} is over {self.max_pixels} pixels "
                                                      "(a decompression bomb?); resize before sending")
                if getattr(image, "n_frames", 1) > 1:
                    raise Rejected("multi_frame", f"{image.n_frames} frames; send a single still image")
                if image.mode not in self.allowed_modes:
                    raise Rejected("mode", f"mode {image.mode} (e.g. CMYK or 16-bit) is not one the lab used; "
                                           "convert to 8-bit RGB")
                if min(width, height) < self.min_side or max(width, height) / min(width, height) > self.max_aspect:
                    raise Rejected("dimensions", f"{width}x{height} is too small or too elongated "
                                                 f"(min side {self.min_side}, max aspect {self.max_aspect:g})")
                image.load()  # the full decode: truncated or corrupt data fails here
        except Rejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("too_many_pixels", f"decompression bomb: {exc}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise Rejected("corrupt", f"the image does not decode ({str(exc)[:80]}); send the complete file") from None
        from PIL import ImageOps

        return ImageOps.exif_transpose(image).convert("RGB")

    def check_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Shape, finite values, range, and the z-score screen; returns the tensor or raises."""
        if self.expected_shape is not None and tuple(tensor.shape) != tuple(self.expected_shape):
            raise Rejected("shape", f"tensor shape {tuple(tensor.shape)}, expected {tuple(self.expected_shape)}")
        if not torch.isfinite(tensor).all():
            raise Rejected("not_finite", "the input holds NaN or Inf values")
        low, high = self.value_range
        if float(tensor.min()) < low or float(tensor.max()) > high:
            raise Rejected("range", f"values {float(tensor.min()):.3g}..{float(tensor.max()):.3g} "
                                    f"outside {low:g}..{high:g}")
        z = self.z_score(tensor)
        if z is not None and z > self.z_limit:
            raise Rejected("out_of_distribution", f"input statistics are {z:.1f} standard deviations from the lab's "
                                                  f"(limit {self.z_limit:g})")
        return tensor

    def z_score(self, tensor: torch.Tensor) -> float | None:
        """The largest per-channel |z| of this input's channel means against the lab's."""
        if self.lab_stats is None:
            return None
        means = tensor.float().mean(dim=tuple(range(1, tensor.dim())))
        lab_mean, lab_std = np.asarray(self.lab_stats["mean"]), np.asarray(self.lab_stats["std"])
        if means.numel() != lab_mean.size:
            return None
        return float(np.max(np.abs((means.numpy() - lab_mean) / lab_std)))


# ---------------------------------------------------------------- JSON requests (text and tensor models)


def read_json(body, max_bytes: int) -> dict:
    """A JSON request body as a dict, or Rejected: empty, too_large, not_utf8, not_json or
    not_object. `body` may already be parsed (TorchServe parses application/json bodies)."""
    import json

    if isinstance(body, dict):
        return body
    if isinstance(body, str):  # TorchServe hands text/* bodies over decoded
        body = body.encode("utf-8")
    if isinstance(body, (list, str, int, float)) and not isinstance(body, bool):
        raise Rejected("not_object", f"the JSON body is a {type(body).__name__}; send a JSON object")
    if not isinstance(body, (bytes, bytearray)) or len(body) == 0:
        raise Rejected("empty", "the request body is empty; send a JSON object")
    if len(body) > max_bytes:
        raise Rejected("too_large", f"{len(body)} bytes is over the {max_bytes}-byte limit; send less")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", f"the body is not valid UTF-8 (byte {exc.start}); encode the JSON as UTF-8") \
            from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected("not_json", f"the body is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise Rejected("not_object", f"the JSON body is a {type(value).__name__}; send a JSON object")
    return value


def _check_keys(value: dict, expected: list[str]) -> None:
    missing, extra = [k for k in expected if k not in value], [k for k in value if k not in expected]
    if missing or extra:
        said = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                           f"unexpected {', '.join(map(str, extra))[:60]}" if extra else "") if part)
        raise Rejected("keys", f"{said}; send exactly {', '.join(repr(k) for k in expected)}")


@dataclass
class TextGuard:
    """Checks on a text request `{"text": "..."}`: size, UTF-8, JSON, keys, a string, not blank,
    at most `max_chars` characters, no NUL or other control characters but whitespace, and (once
    tokenized, by the codec) at most `max_tokens` tokens: a longer text is refused, never cut."""

    max_bytes: int = 100_000
    max_chars: int = 20_000
    max_tokens: int = 64

    def check(self, body) -> str:
        value = read_json(body, self.max_bytes)
        _check_keys(value, ["text"])
        text = value["text"]
        if not isinstance(text, str):
            raise Rejected("type", f"'text' is a {type(text).__name__}; send a string")
        if not text.strip():
            raise Rejected("empty_text", "'text' is empty or blank; send the text to classify")
        if len(text) > self.max_chars:
            raise Rejected("too_long", f"{len(text)} characters is over the {self.max_chars}-character limit")
        if any(ord(c) < 32 and c not in "\t\n\r" for c in text) or "\x7f" in text:
            raise Rejected("control_chars", "'text' holds control characters (NUL, escape...); strip them")
        return text

    def check_tokens(self, count: int) -> None:
        if count > self.max_tokens:
            raise Rejected("too_many_tokens", f"{count} tokens is over the model's {self.max_tokens}; "
                                              "shorten the text or split it")


def _check_representable(name: str, array: np.ndarray, dtype: str) -> None:
    """Refuse values the input's dtype cannot hold: 1e308 is finite as JSON reads it and infinite in float32,
    and a whole number past int64 wraps around when cast."""
    torch_dtype = getattr(torch, dtype, None)
    if torch_dtype is None or dtype == "bool" or not array.size:
        return
    info = torch.finfo(torch_dtype) if torch_dtype.is_floating_point else torch.iinfo(torch_dtype)
    if array.min() < info.min or array.max() > info.max:
        raise Rejected("range", f"'{name}' values {array.min():g}..{array.max():g} do not fit {dtype} "
                                f"({info.min:g}..{info.max:g}); send values the model's dtype can hold")


@dataclass
class TensorGuard:
    """Checks on a tensor request `{name: nested list, ...}` (one item, no batch dimension): size,
    UTF-8, JSON, exactly the model's input names, numbers of the input's dtype (an integer input
    refuses fractions, a bool input takes 0/1), the lab's per-item shape, finite values, and for
    integer inputs the range the lab's inputs span (token ids outside the vocabulary crash an
    embedding)."""

    inputs: dict  # {name: {"shape": [...], "dtype": "int64"}}
    max_bytes: int = 1_000_000
    ranges: dict | None = None  # {name: [low, high]} for integer inputs

    def check(self, body) -> dict[str, np.ndarray]:
        value = read_json(body, self.max_bytes)
        _check_keys(value, list(self.inputs))
        arrays = {}
        for name, declared in self.inputs.items():
            raw = value[name]
            try:
                array = np.asarray(raw, dtype=np.float64)
            except (TypeError, ValueError):
                raise Rejected("shape", f"'{name}' is not a rectangular array of numbers; send nested lists of "
                                        f"shape {declared['shape']}") from None
            if list(array.shape) != list(declared["shape"]):
                raise Rejected("shape", f"'{name}' has shape {list(array.shape)}, expected {declared['shape']} "
                                        "(one item, no batch dimension)")
            if not np.isfinite(array).all():
                raise Rejected("not_finite", f"'{name}' holds NaN or Infinity")
            dtype = declared["dtype"]
            if dtype == "bool" and not np.isin(array, (0, 1)).all():
                raise Rejected("dtype", f"'{name}' is bool; send 0/1 or true/false")
            if not dtype.startswith(("float", "bfloat", "complex")) and not (array == np.round(array)).all():
                raise Rejected("dtype", f"'{name}' is {dtype}; send whole numbers, not fractions")
            _check_representable(name, array, dtype)
            if self.ranges and name in self.ranges:
                low, high = self.ranges[name]
                if array.size and (array.min() < low or array.max() > high):
                    raise Rejected("range", f"'{name}' values {array.min():g}..{array.max():g} are outside "
                                            f"{low:g}..{high:g}, the range of the lab's inputs")
            arrays[name] = array
        return arrays
