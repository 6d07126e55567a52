"""Labelled images for the reference models: scikit-learn's handwritten digits rendered as RGB photos.

The 8x8 digits are drawn onto canvases whose size, aspect ratio, ink and paper colours vary,
so a serving bug (a square resize, a wrong channel order, a missing normalization) changes
what the model sees, as it would with real photographs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.inputs import batch_size_of, check_inputs

__all__ = ["DigitImages", "digits_images", "DIGIT_CLASSES", "HELD_OUT_FRACTION", "RENDER_SEED", "UserData",
           "check_data", "load_user_data"]

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


# ---------------------------------------------------------------- the user's data (--data)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class UserData:
    """The user's labelled (or unlabelled) data: `kind` is "images" (PIL images from a folder of
    class folders), "texts" (strings from a CSV/JSONL) or "tensors" (inputs from a .pt file);
    `labels` are class indices into `class_names` (None without labels)."""

    kind: str
    path: str
    items: object  # list of PIL images, list of str, or model inputs (a tensor, tuple or dict)
    labels: object  # torch.Tensor of int64, or None
    class_names: list | None

    def resolve_labels(self, model_classes: list | None, num_outputs: int):
        """The labels as indices of the model's outputs: by the model's class names when every
        label is one of them, by value when every label is an integer, else in sorted order; a
        Lab2ProdError naming the data when they cannot be the model's outputs."""
        import torch


        if self.labels is None or self.class_names is None:
            labels = self.labels
        else:
            names = [self.class_names[i] for i in self.labels.tolist()]
            if model_classes and set(names) <= set(model_classes):
                labels = torch.tensor([model_classes.index(n) for n in names])
            elif all(n.lstrip("-").isdigit() for n in names):
                labels = torch.tensor([int(n) for n in names])
            else:
                labels = self.labels
        if labels is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_outputs):
            raise Lab2ProdError(f"data {self.path!r} has labels up to {int(labels.max())} ({len(set(labels.tolist()))} "
                                f"classes) but the model answers {num_outputs} scores; name the class folders or "
                                "labels after the model's classes, or as 0..N-1")
        return labels

    def __len__(self) -> int:
        if self.kind == "tensors":
            return batch_size_of(self.items)
        return len(self.items)


@lru_cache(maxsize=4)
def check_data(path: str) -> UserData:
    """`--data` checked before a run (once, whichever studies take it): it reads, and it is one of
    the kinds lab2prod knows."""
    return load_user_data(path)


def load_user_data(path: str) -> UserData:
    """Read `--data PATH`: a folder of class folders of images (`cat/001.png`), a CSV or JSONL of
    `text,label` rows (label optional), or a .pt file holding {"inputs": ..., "labels": ...}
    (loaded weights-only). Raises Lab2ProdError naming the file for anything it cannot use."""

    source = Path(path).expanduser()
    if not source.exists():
        raise Lab2ProdError(f"data {path!r} does not exist; pass a folder of class folders of images, a .csv or "
                            ".jsonl of text,label rows, or a .pt of {'inputs': ..., 'labels': ...}")
    if source.is_dir():
        return _image_folder(source)
    if source.suffix.lower() in (".csv", ".jsonl", ".json"):
        return _text_file(source)
    if source.suffix.lower() in (".pt", ".pth"):
        return _tensor_file(source)
    raise Lab2ProdError(f"data {path!r} is a {source.suffix or 'suffix-less'} file; use a folder of images, a .csv, "
                        "a .jsonl or a .pt")


def _image_folder(folder: Path) -> UserData:
    from PIL import UnidentifiedImageError


    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(c, f) for c in classes for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        loose = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
        hint = (" (images lie directly in it: put each class in its own folder, e.g. cat/001.png)" if loose
                else " (expected class folders of images, e.g. cat/001.png)")
        raise Lab2ProdError(f"data folder {str(folder)!r} has no images in class folders{hint}")
    used = sorted({c for c, _ in files})
    if len(used) < 2:
        raise Lab2ProdError(f"data folder {str(folder)!r} has one class ({used[0]!r}); accuracy needs at least two "
                            "class folders")
    images = []
    for _, file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise Lab2ProdError(f"data image {str(file)!r} cannot be read ({type(exc).__name__}); remove or "
                                "replace it") from None
    import torch

    labels = torch.tensor([used.index(c) for c, _ in files], dtype=torch.long)
    return UserData("images", str(folder), images, labels, used)


def _text_file(file: Path) -> UserData:
    import csv
    import json

    import torch


    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Lab2ProdError(f"data file {str(file)!r} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    if file.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise Lab2ProdError(f"data file {str(file)!r} is not JSON lines (line {exc.lineno}: {exc.msg})") from None
    if not rows or any(not isinstance(r, dict) or not isinstance(r.get("text"), str) for r in rows):
        raise Lab2ProdError(f"data file {str(file)!r} needs a 'text' column (and optionally 'label') in every row; "
                            f"found {len(rows)} rows")
    texts = [r["text"] for r in rows]
    if all(r.get("label") in (None, "") for r in rows):
        return UserData("texts", str(file), texts, None, None)
    if any(r.get("label") in (None, "") for r in rows):
        raise Lab2ProdError(f"data file {str(file)!r} labels some rows and not others; label all or none")
    names = sorted({str(r["label"]) for r in rows})
    if len(names) < 2:
        raise Lab2ProdError(f"data file {str(file)!r} has one label ({names[0]!r}); accuracy needs at least two")
    labels = torch.tensor([names.index(str(r["label"])) for r in rows], dtype=torch.long)
    return UserData("texts", str(file), texts, labels, names)


def _tensor_file(file: Path) -> UserData:
    import torch


    try:
        payload = torch.load(file, weights_only=True)
    except Exception as exc:
        raise Lab2ProdError(f"data file {str(file)!r} does not load with torch.load(weights_only=True) "
                            f"({type(exc).__name__}); save a dict of tensors: torch.save({{'inputs': x, "
                            "'labels': y}}, path)") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise Lab2ProdError(f"data file {str(file)!r} holds {type(payload).__name__}; "
                            "save {'inputs': x, 'labels': y}")
    inputs = check_inputs(payload["inputs"], f"data file {str(file)!r}")
    labels = payload.get("labels")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != batch_size_of(inputs) \
                or torch.is_floating_point(labels):
            raise Lab2ProdError(f"data file {str(file)!r}: 'labels' must be a 1-d integer tensor with one label per "
                                "input")
        labels = labels.long()
    return UserData("tensors", str(file), inputs, labels, None)
