"""Drift detection on what the model sees: embedding MMD, per-feature KS, prediction PSI, image properties."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from .errors import Lab2ProdError

__all__ = [
    "embeddings",
    "mmd2_unbiased",
    "median_bandwidth",
    "mmd_test",
    "ks_statistics",
    "ks_test",
    "psi",
    "psi_test",
    "image_properties",
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
]


# ---------------------------------------------------------------- what the model sees


def embeddings(module: torch.nn.Module, inputs: torch.Tensor, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, logits): the input of the last Linear layer, captured by a hook, and
    the model's output, for every input."""
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not last:
        raise Lab2ProdError("the model has no Linear layer whose input could serve as its embedding")
    captured: list[torch.Tensor] = []
    hook = last[-1].register_forward_hook(lambda mod, args, out: captured.append(args[0].detach().flatten(1)))
    try:
        with torch.inference_mode():
            logits = torch.cat([module(chunk).float() for chunk in inputs.split(batch)])
    finally:
        hook.remove()
    return torch.cat(captured).float().numpy(), logits.numpy()


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


def image_properties(images: list[Image.Image]) -> np.ndarray:
    """Per image: brightness (mean), contrast (std) of the grey levels, width, height, aspect."""
    rows = []
    for image in images:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        rows.append([grey.mean(), grey.std(), image.width, image.height, image.width / image.height])
    return np.asarray(rows, dtype=np.float64)


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


@dataclass
class Features:
    """What the drift tests look at for a set of images."""

    embeddings: np.ndarray
    predictions: np.ndarray
    properties: np.ndarray
    accuracy: float | None


def features_of(module: torch.nn.Module, tensors: torch.Tensor, images: list[Image.Image],
                labels: np.ndarray | None) -> Features:
    embedded, logits = embeddings(module, tensors)
    predictions = logits.argmax(1)
    accuracy = float((predictions == labels).mean()) if labels is not None else None
    return Features(embedded, predictions, image_properties(images), accuracy)


TESTS = {
    "mmd_embedding": lambda ref, cur, seed, classes: mmd_test(ref.embeddings, cur.embeddings, seed=seed)[1],
    "ks_embedding": lambda ref, cur, seed, classes: ks_test(ref.embeddings, cur.embeddings)[1],
    "psi_predictions": lambda ref, cur, seed, classes: psi_test(ref.predictions, cur.predictions, classes,
                                                                seed=seed)[1],
    "ks_image_properties": lambda ref, cur, seed, classes: ks_test(ref.properties, cur.properties)[1],
}


def _subset(features: Features, index: np.ndarray) -> Features:
    return Features(features.embeddings[index], features.predictions[index], features.properties[index], None)


def detection_rates(reference: Features, current: Features, batch_size: int, batches: int, alpha: float,
                    classes: int, seed: int = 0, tests=None) -> list[dict]:
    """For each test: the share of `batches` random batches of `current` (drawn without
    replacement within a batch) whose p-value is below `alpha`, and the median p-value."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(current.embeddings))
    draws = [rng.choice(len(current.embeddings), size=size, replace=False) for _ in range(batches)]
    rows = []
    for name in tests or TESTS:
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

        from .torchserve import free_port

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

    def false_positive_rate(self, test: str = PRIMARY_TEST) -> float | None:
        rows = [r for r in self.scenarios or [] if r["scenario"] == "no shift" and r["test"] == test]
        return rows[0]["detection_rate"] if rows else None

    def missed(self, min_change_pts: float = 5.0, min_rate: float = 0.8, test: str = PRIMARY_TEST) -> list[str]:
        """Scenarios that change accuracy by more than `min_change_pts` yet are detected in fewer
        than `min_rate` of the batches by `test`."""
        return [r["scenario"] for r in self.scenarios or [] if r["test"] == test and r["scenario"] != "no shift"
                and r["accuracy_change_pts"] is not None and abs(r["accuracy_change_pts"]) > min_change_pts
                and r["detection_rate"] < min_rate]


def evaluate_drift(loaded, batch_size: int = 64, batches: int = 50, alpha: float = 0.05, seed: int = 0,
                   include_bugs: bool = True, progress: bool = False) -> DriftReport:
    """Detection rate of every test on every scenario: real-image shifts, the parity catalog's
    serving bugs (on what the lab sent), and another source (photographs). The reference is a
    random half of the held-out data, the batches come from the other half."""
    from tqdm import tqdm

    from .parity import BUGS, encode_request, parity_images, photo_images
    from .preprocess import lab_transform_for

    if loaded.family != "digits":  # labelled images: the digits (a user's --data later)
        return DriftReport(False, f"model {loaded.spec!r} has no labelled image data here (family {loaded.family!r}); "
                                  "drift detection rates need the reference digits")
    transform, recipe = lab_transform_for(loaded.family)
    _, images, labels = parity_images(loaded.family)
    order = np.random.default_rng(seed).permutation(len(images))
    half = len(order) // 2
    ref_idx, cur_idx = order[:half], order[half:]
    ref_images, cur_images = [images[i] for i in ref_idx], [images[i] for i in cur_idx]
    cur_labels = labels[cur_idx]

    def features(tensors, imgs, lbls):
        return features_of(loaded.module, torch.stack(tensors), imgs, lbls)

    reference = features([transform(im) for im in ref_images], ref_images, labels[ref_idx])
    classes = int(max(labels.max() + 1, reference.predictions.max() + 1))

    def of_images(imgs, lbls=cur_labels):
        return features([transform(im) for im in imgs], imgs, lbls)

    scenarios: list[tuple[str, str, Callable[[], Features]]] = []
    for shift in SHIFTS:
        scenarios.append((shift, "data shift", lambda s=shift: of_images(scenario_images(cur_images, s))))
    if include_bugs:
        requests = [encode_request(im, "rgb")[0] for im in cur_images]
        for bug in [b for b in BUGS if b.client == "rgb"]:
            path = bug.path(recipe)
            scenarios.append((bug.name, "serving bug", lambda p=path: features(
                [p(data) for data in requests], cur_images, cur_labels)))
    photos = [photo for _, photo in photo_images()]
    crops = [photo.crop((x, y, x + 160, y + 120)) for photo in photos for x in range(0, 320, 40) for y in (0, 200)]
    scenarios.append(("another source: photographs", "data shift", lambda: of_images(crops, None)))
    measured = [(name, kind, make()) for name, kind, make in scenarios]
    base_accuracy = next(current.accuracy for name, _, current in measured if name == "no shift")
    rows = []
    for name, kind, current in tqdm(measured, desc="drift", unit="scenario", disable=not progress):
        change = None if current.accuracy is None else round(100 * (current.accuracy - base_accuracy), 2)
        for row in detection_rates(reference, current, batch_size, batches, alpha, classes, seed):
            rows.append({"scenario": name, "kind": kind, "accuracy": current.accuracy, "accuracy_change_pts": change,
                         **row})
    return DriftReport(True, "", rows, min(batch_size, half), batches, alpha, half)


def drift_gate(report: DriftReport, max_false_positive_rate: float = 0.1) -> dict:
    """`drift`: the primary test's false-positive rate under no shift is at most
    `max_false_positive_rate`, and every shift that moves accuracy by more than 5 points is
    flagged in at least 80% of the batches; skipped, with the reason, where drift does not apply."""
    from .results import gate

    if not report.applies:
        return gate("drift", False, None, max_false_positive_rate, report.reason, skipped=True)
    fpr, missed = report.false_positive_rate(), report.missed()
    passed = fpr is not None and fpr <= max_false_positive_rate and not missed
    return gate("drift", passed, fpr, max_false_positive_rate,
                f"false-positive rate {fpr:.2f}; " + (f"missed: {', '.join(missed)}" if missed else
                                                     "every shift costing > 5 points flagged in >= 80% of batches"))
