"""The reference models: a conv net and a Linear-heavy net on scikit-learn's handwritten digits, a conv net on
crops of real photographs; their data, their training recipe, and the checksummed cache they are trained into
once."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab2prod.core.files import atomic_write, sha256_file
from lab2prod.kinds.transforms import (
    DIGITS_INPUT_SIZE,
    DIGITS_MEAN,
    DIGITS_STD,
    PHOTO_RECIPE,
    digits_lab_transform,
    imagenet_lab_transform,
    photo_lab_transform,
)
from lab2prod.models import photos
from lab2prod.models.data import RENDER_SEED, digits_images
from lab2prod.models.photos import photo_crops

__all__ = ["DigitsCNN", "DigitsMLP", "PhotoCNN", "REFERENCE_MODELS", "REFERENCE_FAMILIES", "TRAINING",
           "PHOTO_TRAINING", "training_config", "set_eval", "reference_images", "reference_tensors", "reference_batch",
           "digits_batch", "digits_tensors", "photo_batch", "evaluate_accuracy", "train_reference_model",
           "reference_model"]


class DigitsCNN(nn.Module):
    """A small conv net for 3x32x32 digits: two conv blocks and a two-layer head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    """A Linear-heavy net (4.2M parameters, almost all in Linear layers) for 3x32x32 digits."""

    def __init__(self, num_classes: int = 10, width: int = 1024):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * DIGITS_INPUT_SIZE * DIGITS_INPUT_SIZE, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PhotoCNN(nn.Module):
    """A small conv net for 3x112x112 photographs: a strided stem, three conv blocks (conv,
    batch norm, ReLU), global average pooling and a Linear head (10 classes: which photograph a
    crop comes from)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        def block(i: int, o: int, **conv) -> list[nn.Module]:
            return [nn.Conv2d(i, o, **{"kernel_size": 3, "padding": 1, **conv}), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 16, kernel_size=5, stride=2, padding=2),
            *block(16, 24), nn.MaxPool2d(2),
            *block(24, 48), nn.MaxPool2d(2),
            *block(48, 64), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


REFERENCE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "digits_mlp": DigitsMLP,
    "photo_cnn": PhotoCNN,
}

# Which labelled data each reference model learns: "digits" (rendered digits, 3x32x32) or
# "photos" (crops of ten photographs, 3x112x112; lab2prod.models.photos).
REFERENCE_FAMILIES = {"digits_cnn": "digits", "digits_mlp": "digits", "photo_cnn": "photos"}


TRAINING = {"epochs": 10, "batch_size": 64, "lr": 1e-3, "seed": 0, "threads": 1}


# Photos also learn from mirrored crops (a seeded coin per crop): the held-out crops are from the
# other half of each photograph.
PHOTO_TRAINING = {"epochs": 10, "batch_size": 32, "lr": 3e-3, "seed": 0, "threads": 1, "flip": True}


def training_config(name: str) -> dict:
    return PHOTO_TRAINING if REFERENCE_FAMILIES[name] == "photos" else TRAINING


def set_eval(module: nn.Module) -> nn.Module:
    """Put a module in eval mode; a torch.export module refuses .eval() and needs nothing."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


@lru_cache(maxsize=2)
def photo_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo crops of a split through the photo lab transform, with their labels."""

    crops = photo_crops(split)
    transform = photo_lab_transform()
    return torch.stack([transform(image) for image in crops.images]), torch.as_tensor(crops.labels, dtype=torch.long)


def reference_images(family: str, split: str) -> tuple[list, np.ndarray]:
    """(PIL images, labels) of a reference family's split, before any transform."""
    if family == "photos":
        crops = photo_crops(split)
        return crops.images, crops.labels
    data = digits_images(split)
    return data.images, np.asarray(data.labels)


def reference_tensors(family: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a reference family's split: "digits" or "photos"."""
    return photo_tensors(split) if family == "photos" else digits_tensors(split)


def reference_batch(family: str):
    """make_inputs for a reference family: a seeded draw of its split's lab tensors."""
    def make(batch_size: int, seed: int = 0, split: str = "test") -> torch.Tensor:
        images, _ = reference_tensors(family, split)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(images), size=batch_size, replace=batch_size > len(images))
        return images[torch.as_tensor(idx)].clone()

    return make


@lru_cache(maxsize=2)
def digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = digits_images(split)
    transform = digits_lab_transform()
    images = torch.stack([transform(img) for img in data.images])
    return images, torch.as_tensor(data.labels, dtype=torch.long)


def digits_batch(batch_size: int, seed: int = 0, split: str = "test") -> torch.Tensor:
    """A batch of rendered digits through the lab transform, drawn by `seed` from `split`."""
    return reference_batch("digits")(batch_size, seed, split)


@lru_cache(maxsize=1)
def _sample_photos() -> tuple:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return tuple(Image.fromarray(img) for img in load_sample_images().images)


def photo_batch(batch_size: int, seed: int = 0, split: str = "test", transform=None) -> torch.Tensor:
    """Random crops of scikit-learn's sample photographs through the ImageNet lab transform (or
    `transform`, a callable taking a PIL image).

    `split` picks disjoint halves of each photograph (left for "train", right for "test"),
    so tracing inputs and comparison inputs never share pixels.
    """
    photos = _sample_photos()
    transform = transform or imagenet_lab_transform()
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(batch_size):
        photo = photos[int(rng.integers(len(photos)))]
        width, height = photo.size
        half = width // 2
        side = int(rng.integers(min(half, height) // 2, min(half, height) + 1))
        x0 = (0 if split == "train" else half) + int(rng.integers(0, half - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        batch.append(transform(photo.crop((x0, y0, x0 + side, y0 + side))))
    return torch.stack(batch)


def evaluate_accuracy(module: nn.Module, split: str = "test", family: str = "digits") -> float:
    """Top-1 accuracy (0..1) of a reference model on a split of its family's data."""
    images, labels = reference_tensors(family, split)
    module.eval()
    with torch.inference_mode():
        predictions = torch.cat([module(chunk).argmax(1) for chunk in images.split(256)])
    return float((predictions == labels).float().mean())


def _training_key(name: str) -> str:
    config = {"name": name, **TRAINING, "render_seed": RENDER_SEED, "mean": DIGITS_MEAN,
              "std": DIGITS_STD, "torch": ".".join(torch.__version__.split(".")[:2])}
    if REFERENCE_FAMILIES[name] == "photos":
        config = {"name": name, **PHOTO_TRAINING, "seed_crops": photos.PHOTO_SEED, "classes": photos.PHOTO_CLASSES,
                  "crops": photos.CROPS_PER_PHOTO, "scales": [photos.TRAIN_SCALES, photos.TEST_SCALES],
                  "recipe": [PHOTO_RECIPE.resize, PHOTO_RECIPE.crop, PHOTO_RECIPE.mean, PHOTO_RECIPE.std],
                  "torch": config["torch"]}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def train_reference_model(name: str) -> tuple[nn.Module, dict]:
    """Train a reference model on its family's training split (the rendered digits, or the photo
    crops), deterministically; return it and metrics."""
    family, training = REFERENCE_FAMILIES[name], training_config(name)
    images, labels = reference_tensors(family, "train")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(training["threads"])  # one thread: same weights on every machine
    try:
        generator = torch.Generator().manual_seed(training["seed"])
        torch.manual_seed(training["seed"])
        module = REFERENCE_MODELS[name]()
        optimizer = torch.optim.Adam(module.parameters(), lr=training["lr"])
        module.train()
        for _ in range(training["epochs"]):
            order = torch.randperm(len(images), generator=generator)
            for batch in order.split(training["batch_size"]):
                inputs = images[batch]
                if training.get("flip"):
                    mirrored = torch.rand(len(batch), generator=generator) < 0.5
                    inputs = torch.where(mirrored[:, None, None, None], inputs.flip(3), inputs)
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(module(inputs), labels[batch])
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(previous_threads)
    module.eval()
    return module, {"heldout_accuracy": round(evaluate_accuracy(module, "test", family), 4)}


def trained_on() -> dict:
    """The CPU the weights were trained on: its model name and the instruction set torch dispatched to."""
    model = platform.processor() or platform.machine()
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def reference_model(name: str, cache_dir: Path) -> tuple[nn.Module, dict]:
    """A trained reference model from the checksummed cache, training it when absent or corrupt."""
    stem = cache_dir / f"{name}-{_training_key(name)}"
    weights_path, meta_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
    if weights_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") == sha256_file(weights_path):
            module = REFERENCE_MODELS[name]()
            module.load_state_dict(torch.load(weights_path, weights_only=True))
            return module.eval(), meta["metrics"]
    module, metrics = train_reference_model(name)
    atomic_write(weights_path, lambda p: torch.save(module.state_dict(), p))
    # float kernels differ by instruction set, so trained weights (not the accuracy bar) differ between CPUs
    meta = {"model": name, "training": training_config(name), "metrics": metrics,
            "sha256": sha256_file(weights_path), "trained_on": trained_on()}
    atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return module, metrics
