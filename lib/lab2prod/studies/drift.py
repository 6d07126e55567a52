"""Drift detection on what the model sees: embedding MMD, per-feature KS, prediction PSI, image properties."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance, ImageFilter

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.inputs import batch_size_of, call, first_tensor, map_tensors, take, tensors
from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.core.schema import Results, described
from lab2prod.kinds.codec import kind_of
from lab2prod.kinds.image import encode_request
from lab2prod.kinds.preprocess import lab_transform_for
from lab2prod.kinds.tensor import tensor_features
from lab2prod.models.hf import SAMPLE_TEXTS
from lab2prod.models.images import parity_images, photo_crops_of, photo_images
from lab2prod.models.photos import other_photographs
from lab2prod.servers.torchserve.server import free_port

__all__ = [
    "DriftResults",
    "embeddings",
    "mmd2_unbiased",
    "median_bandwidth",
    "mmd_test",
    "ks_statistics",
    "ks_test",
    "psi",
    "psi_test",
    "TEXT_SHIFTS",
    "embedding_layer",
    "text_embedding_layer",
    "applicable_tests",
    "drift_source",
    "TESTS",
    "SHIFTS",
    "scenario_images",
    "Features",
    "features_of",
    "detection_rates",
    "MetricsExporter",
    "PRIMARY_TEST",
    "DriftReport",
    "evaluate_drift",
    "drift_gate",
    "drift_frame",
    "plot_drift",
]


@dataclass(kw_only=True)
class DriftResults(Results):
    """What its notebook records under results/drift.json; the schema is derived from these fields."""

    study: ClassVar[str] = "drift"

    false_positive_rate: float | None = described("share of batches flagged under no shift (primary test)")
    scenarios: list = described("per scenario and test: detection rate, accuracy change, median p-value")
    batch_size: int = described("images per monitored batch")
    alpha: float = described("p-value below which a batch is flagged")
    primary_test: str = described("the test the gate reads")


# ---------------------------------------------------------------- what the model sees


def embedding_layer(module: torch.nn.Module, layer: str = "", task: str = "classifier") -> tuple[str, object]:
    """(description, module or None) of where embeddings are read: the named `layer`'s output,
    else the input of the last Linear layer of a classifier, else (an embedder, or a model without
    a Linear) the model's own output. A Lab2ProdError names the layers when `layer` is not one."""
    named = dict(module.named_modules())
    if layer:
        if layer not in named or not layer:
            choices = [n for n in named if n][:12]
            raise Lab2ProdError(f"layer {layer!r} is not in the model; use one of {', '.join(choices)}"
                                f"{', ...' if len(named) > 13 else ''} (names from model.named_modules())")
        return f"the output of layer {layer!r}", named[layer]
    if task != "embedder":
        linears = [(n, m) for n, m in named.items() if isinstance(m, torch.nn.Linear)]
        if linears:
            return f"the input of the last Linear layer ({linears[-1][0]!r})", linears[-1][1]
    return "the model's output (its embedding)", None


def text_embedding_layer(module: torch.nn.Module) -> str:
    """The name of a text model's embeddings module (token + position embeddings, as the first
    encoder layer sees them), or '' when the model does not say which its input embeddings are.

    Measured on text_langid: the classifier's pooled features (the default for other models)
    flagged typos in 14% and a cut to the first four words in 6% of the batches, though they cost
    21 and 11 points; the embeddings flagged both in every batch, with the same false positives."""
    inner = getattr(module, "model", module)
    get = getattr(inner, "get_input_embeddings", None)
    target = get() if callable(get) else None
    if target is None:
        return ""
    names = {id(m): n for n, m in module.named_modules()}
    name = names.get(id(target), "")
    parent = name.rpartition(".")[0]
    return parent if parent.endswith("embeddings") else name


def _pooled(t: torch.Tensor) -> torch.Tensor:
    # One vector per input: a sequence of vectors (batch, length, features) is averaged over its length.
    t = t.detach().float()
    return t.mean(1) if t.dim() == 3 else t.flatten(1)


def embeddings(module: torch.nn.Module, inputs, batch: int = 128, layer: str = "",
               task: str = "classifier") -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, outputs) for every input (a tensor, tuple or dict batch): embeddings read where
    `embedding_layer` says (by default the input of the last Linear, the penultimate features of a
    classifier), outputs the model's answers."""

    _, target = embedding_layer(module, layer, task)
    captured: list[torch.Tensor] = []
    hook = None
    if target is not None:
        if layer:
            hook = target.register_forward_hook(lambda mod, args, out: captured.append(_pooled(
                out if isinstance(out, torch.Tensor) else first_tensor(out))))
        else:
            hook = target.register_forward_hook(lambda mod, args, out: captured.append(_pooled(args[0])))
    try:
        with torch.inference_mode():
            count = batch_size_of(inputs)
            outputs = torch.cat([first_tensor(call(module, take(inputs, i, i + batch))).float()
                                 for i in range(0, count, batch)])
    finally:
        if hook is not None:
            hook.remove()
    embedded = torch.cat(captured) if captured else _pooled(outputs)
    return embedded.float().numpy(), outputs.flatten(1).numpy()


# ---------------------------------------------------------------- the statistics


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """The median heuristic: the median pairwise Euclidean distance in the pooled sample."""
    pooled = torch.as_tensor(np.concatenate([x, y]), dtype=torch.float64)
    median = float(torch.quantile(torch.pdist(pooled), 0.5))
    return median if median > 0 else 1.0


def _kernel(pooled: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(pooled, pooled) ** 2 / (2 * bandwidth**2))


def _mmd2_from_kernel(kernel: torch.Tensor, in_x: torch.Tensor) -> torch.Tensor:
    # Unbiased MMD^2 for each row of the boolean mask `in_x` (permutations x n), vectorized.
    in_x = in_x.to(kernel.dtype)
    in_y = 1 - in_x
    n_x, n_y = in_x.sum(1), in_y.sum(1)
    diagonal = torch.diagonal(kernel)
    k_xx = ((in_x @ kernel) * in_x).sum(1) - (in_x * diagonal).sum(1)
    k_yy = ((in_y @ kernel) * in_y).sum(1) - (in_y * diagonal).sum(1)
    k_xy = ((in_x @ kernel) * in_y).sum(1)
    return k_xx / (n_x * (n_x - 1)) + k_yy / (n_y * (n_y - 1)) - 2 * k_xy / (n_x * n_y)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased estimate of the squared MMD between samples x and y with an RBF kernel."""
    pooled = torch.as_tensor(np.concatenate([x, y]), dtype=torch.float64)
    mask = torch.zeros(1, len(pooled), dtype=torch.bool)
    mask[0, : len(x)] = True
    return float(_mmd2_from_kernel(_kernel(pooled, bandwidth), mask)[0])


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0,
             bandwidth: float | None = None) -> tuple[float, float]:
    """(MMD^2, p-value) of a permutation test: RBF kernel, median-heuristic bandwidth; the
    p-value counts the permuted statistics at least as large as the observed one, plus one."""
    bandwidth = bandwidth or median_bandwidth(x, y)
    pooled = torch.as_tensor(np.concatenate([x, y]), dtype=torch.float64)
    kernel = _kernel(pooled, bandwidth)
    n, n_x = len(pooled), len(x)
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(permutations + 1, n, dtype=torch.bool)
    masks[0, :n_x] = True
    for i in range(1, permutations + 1):
        masks[i, torch.randperm(n, generator=generator)[:n_x]] = True
    stats = _mmd2_from_kernel(kernel, masks)
    observed = float(stats[0])
    return observed, float((1 + (stats[1:] >= stats[0]).sum()) / (permutations + 1))


def ks_statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic of every column at once (ties handled: the empirical CDFs are
    compared only where the pooled value changes). Checked against scipy.stats.ks_2samp."""
    n, m = len(x), len(y)
    pooled = np.concatenate([x, y]).astype(np.float64)
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    from_x = order < n
    gap = np.cumsum(from_x, axis=0) / n - np.cumsum(~from_x, axis=0) / m
    last_of_tie = np.diff(values, axis=0, append=np.inf) != 0
    return np.abs(np.where(last_of_tie, gap, 0.0)).max(axis=0)


def ks_test(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(largest KS statistic, Bonferroni-corrected p-value) over the features (columns): the
    asymptotic two-sided p-value of scipy's ks_2samp (scipy.stats.kstwo), for all columns at once."""
    from scipy.stats import kstwo

    x, y = np.atleast_2d(x.T).T, np.atleast_2d(y.T).T
    varying = (np.ptp(x, axis=0) > 0) | (np.ptp(y, axis=0) > 0)
    if not varying.any():
        return 0.0, 1.0
    largest = float(ks_statistics(x[:, varying], y[:, varying]).max())
    effective_n = np.round(len(x) * len(y) / (len(x) + len(y)))
    p_min = float(np.clip(kstwo.sf(largest, effective_n), 0, 1))  # sf falls as D grows: the largest D
    return largest, min(1.0, p_min * int(varying.sum()))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int, eps: float = 1e-4) -> float:
    """Population stability index of two class-label samples over `bins` classes."""
    p = np.bincount(expected, minlength=bins) / max(len(expected), 1) + eps
    q = np.bincount(actual, minlength=bins) / max(len(actual), 1) + eps
    return float(np.sum((q - p) * np.log(q / p)))


def psi_test(reference: np.ndarray, batch: np.ndarray, bins: int, permutations: int = 200,
             seed: int = 0) -> tuple[float, float]:
    """(PSI, p-value): PSI of the predicted classes with a permutation p-value, so it can be
    read at the same alpha as the other tests (the 0.1/0.2 rules of thumb ignore batch size)."""
    observed = psi(reference, batch, bins)
    pooled = np.concatenate([reference, batch])
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(permutations):
        shuffled = rng.permutation(pooled)
        count += psi(shuffled[: len(reference)], shuffled[len(reference):], bins) >= observed
    return observed, (1 + count) / (permutations + 1)


# ---------------------------------------------------------------- scenarios


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# Shifts a real data source goes through, applied to real images.
SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "no shift": lambda im: im,
    "brighter (x1.5)": lambda im: ImageEnhance.Brightness(im).enhance(1.5),
    "darker (x0.6)": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    "low contrast (x0.4)": lambda im: ImageEnhance.Contrast(im).enhance(0.4),
    "blur (radius 2)": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "jpeg quality 10": lambda im: _jpeg(im, 10),
    "rotated 30 degrees": lambda im: im.rotate(30, fillcolor=im.getpixel((0, 0))),
}


def scenario_images(images: list[Image.Image], shift: str) -> list[Image.Image]:
    if shift not in SHIFTS:
        raise Lab2ProdError(f"shift {shift!r} is not known; use one of {', '.join(SHIFTS)}")
    return [SHIFTS[shift](image) for image in images]


TEXT_SHIFTS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "no shift": lambda text, rng: text,
    "typos (1 letter in 6)": lambda text, rng: "".join(
        chr(int(rng.integers(97, 123))) if c.isalpha() and rng.random() < 1 / 6 else c for c in text),
    "upper case": lambda text, rng: text.upper(),
    "first 4 words only": lambda text, rng: " ".join(text.split()[:4]),
}


def _tensor_shifts(sample) -> dict[str, Callable]:
    """Shifts of tensor inputs, by what they hold: float features scaled, offset or noised; integer
    ids redrawn in their range (zeros, the padding, kept) and sequences cut to their first half."""

    def floats(fn):
        return lambda batch, rng: map_tensors(lambda t: fn(t, rng) if torch.is_floating_point(t) else t, batch)

    def noise(t, rng):
        drawn = torch.as_tensor(rng.standard_normal(tuple(t.shape)), dtype=t.dtype)
        return t + 0.5 * t.float().std() * drawn

    def other_ids(t, rng):
        if torch.is_floating_point(t) or t.dtype == torch.bool or int(t.max()) <= 1:
            return t  # masks stay masks
        drawn = torch.as_tensor(rng.integers(1, int(t.max()) + 1, size=tuple(t.shape)), dtype=t.dtype)
        return torch.where(t != 0, drawn, t)

    def half(t, rng):
        if torch.is_floating_point(t) or t.dim() != 2 or t.shape[1] < 4:
            return t
        cut = t.clone()
        cut[:, t.shape[1] // 2:] = 0
        return cut

    shifts: dict[str, Callable] = {"no shift": lambda batch, rng: batch}
    held = tensors(sample)
    if any(torch.is_floating_point(t) for t in held):
        shifts["features scaled x1.5"] = floats(lambda t, rng: t * 1.5)
        shifts["features offset by +0.5 std"] = floats(lambda t, rng: t + 0.5 * t.float().std())
        shifts["noise (0.5 std)"] = floats(noise)
    if any(not torch.is_floating_point(t) and t.dtype != torch.bool and int(t.max()) > 1 for t in held):
        shifts["other ids (drawn in range)"] = lambda batch, rng: map_tensors(lambda t: other_ids(t, rng), batch)
    if any(not torch.is_floating_point(t) and t.dim() == 2 and t.shape[1] >= 4 for t in held):
        shifts["first half of each sequence"] = lambda batch, rng: map_tensors(lambda t: half(t, rng), batch)
    return shifts


@dataclass
class Features:
    """What the drift tests look at for a set of inputs: embeddings, predicted classes (None for
    an embedder), properties of the raw inputs (image, text or tensor statistics), accuracy when
    labelled."""

    embeddings: np.ndarray
    predictions: np.ndarray | None
    properties: np.ndarray | None
    accuracy: float | None


def features_of(module: torch.nn.Module, inputs, properties: np.ndarray | None, labels: np.ndarray | None,
                layer: str = "", task: str = "classifier") -> Features:
    embedded, outputs = embeddings(module, inputs, layer=layer, task=task)
    predictions = outputs.argmax(1) if task != "embedder" else None
    accuracy = float((predictions == labels).mean()) if labels is not None and predictions is not None else None
    return Features(embedded, predictions, properties, accuracy)


TESTS = {
    "mmd_embedding": lambda ref, cur, seed, classes: mmd_test(ref.embeddings, cur.embeddings, seed=seed)[1],
    "ks_embedding": lambda ref, cur, seed, classes: ks_test(ref.embeddings, cur.embeddings)[1],
    "psi_predictions": lambda ref, cur, seed, classes: psi_test(ref.predictions, cur.predictions, classes,
                                                                seed=seed)[1],
    "ks_input_properties": lambda ref, cur, seed, classes: ks_test(ref.properties, cur.properties)[1],
}


def _subset(features: Features, index: np.ndarray) -> Features:
    return Features(features.embeddings[index],
                    None if features.predictions is None else features.predictions[index],
                    None if features.properties is None else features.properties[index], None)


def applicable_tests(features: Features) -> list[str]:
    """The tests these features allow: no prediction PSI for an embedder, no property KS without properties."""
    return [name for name in TESTS if not (name == "psi_predictions" and features.predictions is None)
            and not (name == "ks_input_properties" and features.properties is None)]


def detection_rates(reference: Features, current: Features, batch_size: int, batches: int, alpha: float,
                    classes: int, seed: int = 0, tests=None) -> list[dict]:
    """For each test: the share of `batches` random batches of `current` (drawn without
    replacement within a batch) whose p-value is below `alpha`, and the median p-value."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(current.embeddings))
    draws = [rng.choice(len(current.embeddings), size=size, replace=False) for _ in range(batches)]
    rows = []
    for name in tests or applicable_tests(reference):
        p_values = np.array([TESTS[name](reference, _subset(current, draw), seed + i, classes)
                             for i, draw in enumerate(draws)])
        rows.append({"test": name, "batch_size": size, "detection_rate": float((p_values < alpha).mean()),
                     "median_p_value": float(np.median(p_values))})
    return rows


# ---------------------------------------------------------------- metrics


class MetricsExporter:
    """Prometheus metrics a handler or service updates: a data_drift_score gauge, an inference
    latency histogram with a bucket boundary on the SLA, and requests counted by outcome."""

    def __init__(self, sla_ms: float = 100.0, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry()
        sla_s = sla_ms / 1000.0
        buckets = sorted({0.005, 0.01, 0.025, 0.05, 0.25, 0.5, 1.0, 2.5, sla_s, float("inf")})
        self.drift = Gauge("data_drift_score", "Drift score of the last window (1 - p-value of the MMD test)",
                           ["test"], registry=self.registry)
        self.latency = Histogram("inference_latency_seconds", "Inference latency", buckets=buckets,
                                 registry=self.registry)
        self.requests = Counter("inference_requests", "Inference requests by outcome", ["outcome"],
                                registry=self.registry)

    def exposition(self) -> str:
        """The text a Prometheus server scrapes from /metrics."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def serve(self, port: int = 0) -> tuple[object, int]:
        """Start a /metrics endpoint on 127.0.0.1 (a free port when 0); returns (server, port)."""
        from prometheus_client import start_http_server


        port = port or free_port()
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return server, port


# ---------------------------------------------------------------- the whole study


PRIMARY_TEST = "mmd_embedding"


@dataclass
class DriftReport:
    applies: bool
    reason: str = ""
    scenarios: list = None  # rows: scenario, kind, accuracy, accuracy_change_pts, test, detection_rate, ...
    batch_size: int = 0
    batches: int = 0
    alpha: float = 0.05
    reference_size: int = 0
    reference: str = ""  # what the reference is: "held-out digits", "texts of reviews.csv", ...
    embedding: str = ""  # where the embeddings are read

    def false_positive_rate(self, test: str = PRIMARY_TEST) -> float | None:
        rows = [r for r in self.scenarios or [] if r["scenario"] == "no shift" and r["test"] == test]
        return rows[0]["detection_rate"] if rows else None

    def missed(self, min_change_pts: float = 5.0, min_rate: float = 0.8, test: str = PRIMARY_TEST) -> list[str]:
        """Scenarios that change accuracy by more than `min_change_pts` yet are detected in fewer
        than `min_rate` of the batches by `test`."""
        return [r["scenario"] for r in self.scenarios or [] if r["test"] == test and r["scenario"] != "no shift"
                and r["accuracy_change_pts"] is not None and abs(r["accuracy_change_pts"]) > min_change_pts
                and r["detection_rate"] < min_rate]


@dataclass
class _Source:
    """Reference and current items of one kind, how they become model inputs and properties, and
    the shifts that apply to them: {name: (kind, fn(items, rng) -> items, keeps labels)}."""

    what: str
    reference: object
    current: object
    ref_labels: np.ndarray | None
    cur_labels: np.ndarray | None
    to_inputs: Callable
    properties: Callable
    shifts: dict


def _halves(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return order[: count // 2], order[count // 2:]


def _labels(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values)


def _image_source(loaded, seed: int, include_bugs: bool) -> _Source:
    transform, recipe = lab_transform_for(loaded.family, loaded.lab_transform)
    if loaded.data is not None and loaded.data.kind == "images":
        images, labels = list(loaded.data.items), _labels(loaded.data_labels)
        what = f"images of {loaded.data.path}"
    elif loaded.family in ("digits", "photos"):
        _, images, labels = parity_images(loaded.family)
        what = "held-out digits" if loaded.family == "digits" else "held-out photo crops"
    else:
        images, labels, what = [image for _, image in photo_crops_of(240, seed)], None, "crops of sample photographs"
    ref, cur = _halves(len(images), seed)
    shifts = {name: ("data shift", lambda items, rng, s=name: scenario_images(items, s), True) for name in SHIFTS}
    if include_bugs and recipe is not None:
        for bug in [b for b in kind_of(loaded.kind).bugs if b.client == "rgb"]:
            path = bug.path(recipe)
            # The images are as they were (their properties too); what the server made of them is not.
            shifts[bug.name] = ("serving bug", lambda items, rng, p=path: [(im, p(encode_request(im, "rgb")[0]))
                                                                          for im in items], True)
    if loaded.family == "photos":
        others = other_photographs()
        shifts["another source: grey-level photographs"] = ("data shift", lambda items, rng: others, False)
    elif loaded.family == "digits" or loaded.data is not None:
        photos = [photo for _, photo in photo_images()]
        crops = [photo.crop((x, y, x + 160, y + 120)) for photo in photos for x in range(0, 320, 40) for y in (0, 200)]
        shifts["another source: photographs"] = ("data shift", lambda items, rng: crops, False)

    def to_inputs(items):
        # A serving bug's items are (image, the tensor its path made); images go through the lab transform.
        return torch.stack([item[1] if isinstance(item, tuple) else transform(item) for item in items])

    def properties(items):
        return kind_of(loaded.kind).features([item[0] if isinstance(item, tuple) else item for item in items])

    return _Source(what, [images[i] for i in ref], [images[i] for i in cur], None if labels is None else labels[ref],
                   None if labels is None else labels[cur], to_inputs, properties, shifts)


def _text_source(loaded, seed: int) -> _Source:
    texts, labels = list(loaded.data.items), _labels(loaded.data_labels)
    ref, cur = _halves(len(texts), seed)
    shifts = {name: ("data shift", lambda items, rng, f=fn: [f(t, rng) for t in items], True)
              for name, fn in TEXT_SHIFTS.items()}
    if set(texts) != set(SAMPLE_TEXTS):
        shifts["another source: the bundled sample texts"] = ("data shift", lambda items, rng: list(SAMPLE_TEXTS),
                                                              False)
    return _Source(f"texts of {loaded.data.path}", [texts[i] for i in ref], [texts[i] for i in cur],
                   None if labels is None else labels[ref], None if labels is None else labels[cur],
                   loaded.text_path.encode, kind_of(loaded.kind).features, shifts)


def _tensor_source(loaded, seed: int, count: int = 360) -> _Source:
    if loaded.data is not None and loaded.data.kind == "tensors":
        items, labels, what = loaded.data.items, _labels(loaded.data_labels), f"inputs of {loaded.data.path}"
    else:
        items = loaded.make_inputs(count, seed, "test")
        labels = _labels(loaded.make_labels(count, seed, "test")) if loaded.make_labels is not None else None
        what = f"{count} {'labelled ' if labels is not None else ''}inputs from {loaded.spec}'s input function"
    ref, cur = _halves(batch_size_of(items), seed)

    def rows(index):
        return map_tensors(lambda t: t[torch.as_tensor(index)], items)

    shifts = {name: ("data shift", fn, True) for name, fn in _tensor_shifts(items).items()}
    return _Source(what, rows(ref), rows(cur), None if labels is None else labels[ref],
                   None if labels is None else labels[cur], lambda batch: batch, tensor_features, shifts)


def drift_source(loaded, seed: int = 0, include_bugs: bool = True) -> _Source | str:
    """Where the reference and the monitored batches come from for this model, or why drift
    cannot be measured here (a string)."""
    if loaded.kind == "image":
        return _image_source(loaded, seed, include_bugs)
    if loaded.kind == "text":
        if loaded.data is None or loaded.data.kind != "texts":
            return (f"model {loaded.spec!r} is a text model and drift needs your texts as the reference: pass "
                    "--data texts.csv (text,label rows; a few hundred); the 32 bundled sentences are too few")
        return _text_source(loaded, seed)
    return _tensor_source(loaded, seed)


def evaluate_drift(loaded, batch_size: int = 64, batches: int = 50, alpha: float = 0.05, seed: int = 0,
                   include_bugs: bool = True, progress: bool = False, layer: str = "") -> DriftReport:
    """Detection rate of every test on every scenario. The reference is a random half of the
    held-out data (the digits, the user's --data, or the input function's draws); the monitored
    batches come from the other half, shifted: real image shifts, the parity catalog's serving
    bugs (where the lab transform has a known recipe) and another source (photographs); for texts,
    typos, upper case, truncation and another source; for tensors, scaled, offset and noisy
    features, redrawn ids and cut sequences. Embeddings are read at `layer` (see embedding_layer)."""

    source = drift_source(loaded, seed, include_bugs)
    if isinstance(source, str):
        return DriftReport(False, source)
    default_text = not layer and loaded.text_path is not None and loaded.task == "classifier"
    layer = text_embedding_layer(loaded.module) if default_text else layer
    where, _ = embedding_layer(loaded.module, layer, loaded.task)
    if default_text and layer:
        where += (" (the token embeddings averaged over the sequence: a text classifier's default, as its last "
                  "layers learn to ignore spelling and length; pass layer= to read another)")

    def features(items, labels):
        return features_of(loaded.module, source.to_inputs(items), source.properties(items), labels, layer,
                           loaded.task)

    reference = features(source.reference, source.ref_labels)
    classes = 0 if reference.predictions is None else int(max(
        (source.ref_labels.max() + 1) if source.ref_labels is not None else 0, reference.predictions.max() + 1))
    rng = np.random.default_rng(seed)
    measured = []
    for name, (kind, shift, keeps_labels) in source.shifts.items():
        measured.append((name, kind, features(shift(source.current, rng), source.cur_labels if keeps_labels else None)))
    base_accuracy = next(current.accuracy for name, _, current in measured if name == "no shift")
    rows = []
    for name, kind, current in progress_steps(measured, "drift", "scenario", show=progress):
        change = None if current.accuracy is None or base_accuracy is None else \
            round(100 * (current.accuracy - base_accuracy), 2)
        for row in detection_rates(reference, current, batch_size, batches, alpha, classes, seed):
            rows.append({"scenario": name, "kind": kind, "accuracy": current.accuracy, "accuracy_change_pts": change,
                         **row})
    size = len(reference.embeddings)
    return DriftReport(True, "", rows, min(batch_size, size), batches, alpha, size, source.what, where)


def drift_gate(report: DriftReport, max_false_positive_rate: float = 0.1) -> dict:
    """`drift`: the primary test's false-positive rate under no shift is at most
    `max_false_positive_rate`, and every shift that moves accuracy by more than 5 points is
    flagged in at least 80% of the batches; skipped, with the reason, where drift does not apply."""

    if not report.applies:
        return gate("drift", False, None, max_false_positive_rate, report.reason, skipped=True)
    fpr, missed = report.false_positive_rate(), report.missed()
    passed = fpr is not None and fpr <= max_false_positive_rate and not missed
    labelled = any(r["accuracy_change_pts"] is not None for r in report.scenarios or [])
    if missed:
        said = f"missed: {', '.join(missed)}"
    elif labelled:
        said = "every shift costing > 5 points flagged in >= 80% of batches"
    else:
        said = "no labels, so no shift is known to cost accuracy: only false positives are judged (give labelled data)"
    return gate("drift", passed, fpr, max_false_positive_rate, f"false-positive rate {fpr:.2f}; {said}")


# ---------------------------------------------------------------- tables and plots of the notebook


def drift_frame(report) -> pd.DataFrame:
    """Detection rate per scenario (rows) and test (columns), with the accuracy change."""
    frame = pd.DataFrame(report.scenarios)
    order = list(dict.fromkeys(frame["scenario"]))
    rates = frame.pivot(index="scenario", columns="test", values="detection_rate")
    about = frame.drop_duplicates("scenario").set_index("scenario")[["kind", "accuracy_change_pts"]]
    tests = list(dict.fromkeys(frame["test"]))
    return about.join(rates[tests]).loc[order]


def plot_drift(report):
    """Heat map of detection rates, scenario x test, with the accuracy change beside each row."""
    import matplotlib.pyplot as plt

    table = drift_frame(report)
    tests = [c for c in table.columns if c not in ("kind", "accuracy_change_pts")]
    values = table[tests].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(8, 0.34 * len(table) + 1.5))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7)
    changes = table["accuracy_change_pts"].tolist()
    ax.set_yticks(range(len(table)), [f"{name} ({'n/a' if pd.isna(c) else f'{c:+.1f} pts'})"
                                      for name, c in zip(table.index, changes, strict=True)], fontsize=8)
    ax.set_xticks(range(len(tests)), tests, rotation=20, ha="right", fontsize=8)
    ax.set_title(f"Share of batches flagged (batch {report.batch_size}, p < {report.alpha:g}); "
                 "first row: false positives")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig
