"""Preprocessing parity: the serving path and a catalog of real serving bugs, measured against the lab path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.core.schema import Measure, Results, described
from lab2prod.kinds.image import CLIENTS, encode_request
from lab2prod.kinds.image_bugs import BUGS, PARTS, Bug, bug_names, composed
from lab2prod.kinds.preprocess import ServingPath, lab_transform_for, load_transform
from lab2prod.kinds.transforms import Recipe
from lab2prod.models.images import parity_images
from lab2prod.studies import chain
from lab2prod.studies.text_parity import (
    diagnose_text,
    differing_requests,
    evaluate_text_parity,
    text_bug_names,
    text_serving_gate,
    text_signature,
)

__all__ = [
    "chain_stage",
    "diagnose",
    "diagnosis_text",
    "signature",
    "ParityResults",
    "Bug",
    "BUGS",
    "bug_names",
    "select_bugs",
    "RequestSet",
    "make_request_set",
    "PathResult",
    "predict",
    "evaluate_path",
    "worst_images",
    "viewable",
    "ParityReport",
    "evaluate_parity",
    "serving_gate",
    "parity_serving_frame",
    "parity_bug_frame",
    "plot_parity_impact",
    "text_model_view",
    "plot_model_view",
]


@dataclass(kw_only=True)
class ParityResults(Results):
    """What its notebook records under results/parity.json; the schema is derived from these fields."""

    study: ClassVar[str] = "parity"
    measures: ClassVar[tuple[Measure, ...]] = (Measure("parity.lab_accuracy", "accuracy"),)

    applies: bool = described("false for a model that takes tensors (no image preprocessing to compare)")
    kind: str = described("image (request bytes through the lab transform) or text (JSON through the tokenizer)")
    texts: int = described("texts sent as requests (a text model)")
    bugs_not_applicable: dict = described("text bugs that need what this model lacks, with the reason")
    serving_transform: str = described("the serving path under test")
    lab_transform: str | None = described("the lab transform the serving path is compared with")
    recipe: dict | None = described("resize, crop, mean and std of the lab transform")
    images: int = described("images sent as requests")
    labelled: bool = described("whether accuracy (labels) or only agreement is measured")
    serving_max_abs_diff: float | None = described("largest per-element difference, serving vs lab tensors")
    lab_accuracy: float | None = described("accuracy of the lab path on the requests (0-1)")
    serving: list = described("the serving path per client encoding (rgb, grayscale, rgba, palette, exif); for texts,"
                              " encodings that differ and the output difference")
    bugs: list = described("each catalogued serving bug: tensor diff (texts: encodings that differ), agreement, "
                           "accuracy and drop, failed requests")
    stages: list = described("the chain's preprocess stage: the serving path against the lab path on this study's "
                             "requests (lab2prod.studies.chain)")



# ---------------------------------------------------------------- what clients send












# ---------------------------------------------------------------- the catalog of serving bugs


def select_bugs(names) -> list[Bug]:
    """The catalogued image bugs named in `names` ("all" or a list), in catalog order; names of
    text bugs (lab2prod.studies.text_parity) are accepted and left to the text catalog."""

    names = [names] if isinstance(names, str) else list(names)
    if names == ["all"]:
        return list(BUGS)
    unknown = [n for n in names if n not in bug_names() and n not in text_bug_names()]
    if unknown:
        raise Lab2ProdError(f"bugs {unknown} are not catalogued; use 'all' or some of {', '.join(bug_names())} "
                            f"(images) or {', '.join(text_bug_names())} (texts)")
    return [bug for bug in BUGS if bug.name in names]


# ---------------------------------------------------------------- images








# ---------------------------------------------------------------- running a path


@dataclass
class RequestSet:
    """What one kind of client sends for every image, and the lab path's tensors and predictions."""

    client: str
    requests: list[bytes]
    lab_tensors: list[torch.Tensor]
    lab_predictions: np.ndarray


def predict(module: torch.nn.Module, tensors: list, batch_size: int = 64) -> np.ndarray:
    """Top-1 class per tensor; -1 where there is no tensor (the path raised) or the model raised.
    Tensors of the common shape go in batches; odd shapes go one at a time."""
    predictions = np.full(len(tensors), -1, dtype=np.int64)
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in tensors]
    common = max(set(s for s in shapes if s), key=shapes.count, default=None)
    batched = [i for i, s in enumerate(shapes) if s == common]
    single = [i for i, s in enumerate(shapes) if s is not None and s != common]
    with torch.inference_mode():
        for start in range(0, len(batched), batch_size):
            chunk = batched[start:start + batch_size]
            try:
                logits = module(torch.stack([tensors[i] for i in chunk]))
                predictions[chunk] = logits.argmax(1).numpy()
            except Exception:
                single.extend(chunk)
        for i in single:
            try:
                predictions[i] = int(module(tensors[i].unsqueeze(0)).argmax(1)[0])
            except Exception:
                predictions[i] = -1
    return predictions


def _run(path: Callable[[bytes], torch.Tensor], requests: list[bytes]) -> tuple[list, list]:
    tensors, errors = [], []
    for data in requests:
        try:
            tensors.append(path(data))
            errors.append(None)
        except Exception as exc:
            tensors.append(None)
            errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}")
    return tensors, errors


def make_request_set(client: str, images: list[Image.Image], lab_transform: Callable,
                     module: torch.nn.Module) -> RequestSet:
    """Encode every image as `client` sends it and run the lab path on what the lab loader sees."""
    encoded = [encode_request(image, client) for image in images]
    lab_tensors = [lab_transform(lab_image) for _, lab_image in encoded]
    return RequestSet(client, [data for data, _ in encoded], lab_tensors, predict(module, lab_tensors))


@dataclass
class PathResult:
    """One serving path on one request set, compared image by image with the lab path."""

    path: str
    client: str
    max_abs_diff: np.ndarray  # per image; inf where the shapes differ or the path failed
    mean_abs_diff: np.ndarray
    predictions: np.ndarray
    lab_predictions: np.ndarray
    labels: np.ndarray | None
    errors: list
    shapes: list
    tensors: list = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        """max/mean abs diff over images, top-1 agreement with the lab, accuracy and the drop in
        points (None without labels), and how many requests failed."""
        finite = self.mean_abs_diff[np.isfinite(self.mean_abs_diff)]
        row = {
            "bug": self.path,
            "client": self.client,
            "max_abs_diff": float(self.max_abs_diff.max()) if len(self.max_abs_diff) else 0.0,
            "mean_abs_diff": float(finite.mean()) if len(finite) else float("inf"),
            "top1_agreement": float((self.predictions == self.lab_predictions).mean()),
            "accuracy": None,
            "lab_accuracy": None,
            "accuracy_drop_pts": None,
            "failed_requests": sum(e is not None for e in self.errors),
            "shape_mismatches": sum(s is None for s in self.shapes),
        }
        if self.labels is not None:
            accuracy = float((self.predictions == self.labels).mean())
            lab_accuracy = float((self.lab_predictions == self.labels).mean())
            row.update(accuracy=accuracy, lab_accuracy=lab_accuracy,
                       accuracy_drop_pts=round(100 * (lab_accuracy - accuracy), 2))
        return row


def evaluate_path(name: str, path: Callable[[bytes], torch.Tensor], request_set: RequestSet,
                  module: torch.nn.Module, labels: np.ndarray | None) -> PathResult:
    """Run `path` on every request of `request_set` and compare tensors and predictions with the
    lab path. A tensor whose shape differs from the lab's counts as an infinite difference."""
    tensors, errors = _run(path, request_set.requests)
    max_diff = np.full(len(tensors), np.inf)
    mean_diff = np.full(len(tensors), np.inf)
    shapes = []
    for i, (tensor, lab) in enumerate(zip(tensors, request_set.lab_tensors, strict=False)):
        if tensor is None:
            shapes.append("error")
            continue
        if tuple(tensor.shape) != tuple(lab.shape):
            shapes.append(None)
            continue
        shapes.append(tuple(tensor.shape))
        diff = (tensor.float() - lab.float()).abs()
        max_diff[i], mean_diff[i] = float(diff.max()), float(diff.mean())
    return PathResult(name, request_set.client, max_diff, mean_diff, predict(module, tensors),
                      request_set.lab_predictions, labels, errors, shapes, tensors)


def worst_images(result: PathResult, names: list[str], request_set: RequestSet, atol: float,
                 limit: int = 10) -> list[dict]:
    """The images where a path differs from the lab by more than `atol`, worst first: which
    image, how much, the shapes, and whether the prediction changed."""
    rows = []
    for i in np.argsort(-result.max_abs_diff, kind="stable"):
        if result.max_abs_diff[i] <= atol:
            break
        tensor = result.tensors[i] if result.tensors else None
        rows.append({
            "image": names[i],
            "client": result.client,
            "max_abs_diff": float(result.max_abs_diff[i]),
            "mean_abs_diff": float(result.mean_abs_diff[i]),
            "shape": tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None,
            "lab_shape": tuple(request_set.lab_tensors[i].shape),
            "prediction": int(result.predictions[i]),
            "lab_prediction": int(result.lab_predictions[i]),
            "error": result.errors[i],
        })
        if len(rows) >= limit:
            break
    return rows


def viewable(tensor: torch.Tensor, recipe: Recipe | None) -> np.ndarray:
    """A model input as an HWC image in [0, 1]: undo the recipe's Normalize (or min-max scale
    when there is no recipe) and clip, so a plot shows what the model sees."""
    image = tensor.detach().float().clone()
    if recipe is not None and image.shape[0] == len(recipe.mean):
        image = image * torch.tensor(recipe.std).view(-1, 1, 1) + torch.tensor(recipe.mean).view(-1, 1, 1)
    else:
        image = (image - image.min()) / (image.max() - image.min() + 1e-12)
    if image.shape[0] == 1:
        image = image.repeat(3, 1, 1)
    return image[:3].clamp(0, 1).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- the whole comparison


@dataclass
class ParityReport:
    """Everything the parity notebook shows: the serving path on every client, and each bug."""

    applies: bool
    reason: str
    names: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    recipe: Recipe | None = None
    request_sets: dict[str, RequestSet] = field(default_factory=dict)
    serving: list[PathResult] = field(default_factory=list)
    bugs: list[PathResult] = field(default_factory=list)
    catalog: list[Bug] = field(default_factory=list)
    kind: str = "image"

    @property
    def serving_max_abs_diff(self) -> float:
        return max((float(r.max_abs_diff.max()) for r in self.serving if len(r.max_abs_diff)), default=0.0)

    @property
    def lab_accuracy(self) -> float | None:
        rgb = self.request_sets.get("rgb")
        if rgb is None or self.labels is None:
            return None
        return float((rgb.lab_predictions == self.labels).mean())

    def bug_rows(self) -> list[dict]:
        """One summary per bug with its one-line description, most harmful first: by accuracy
        drop where there are labels, else by disagreement with the lab, then by mean diff."""
        described = {bug.name: bug for bug in self.catalog}
        rows = [{**r.summary(), "what": described[r.path].what, "where": described[r.path].where}
                for r in self.bugs]

        def impact(row):
            drop = row["accuracy_drop_pts"] if row["accuracy_drop_pts"] is not None else 0.0
            return (-drop, row["top1_agreement"], -min(row["mean_abs_diff"], 1e30))

        return sorted(rows, key=impact)


def evaluate_parity(loaded, lab_transform: str = "", serving_transform: str = "", bugs=("all",),
                    max_images: int = 0, seed: int = 0, progress: bool = True) -> ParityReport:
    """Compare the serving path (lab2prod's, or the user's `serving_transform`, bytes -> tensor)
    with the lab path on every client's encoding, and every selected bug on its client's."""


    if not loaded.takes_images and not lab_transform:
        return ParityReport(False, f"model {loaded.spec!r} takes {loaded.inputs_text}, not images; "
                                   "there is no image preprocessing to compare")
    transform, recipe = lab_transform_for(loaded.family, lab_transform)
    serving = load_transform(serving_transform, "serving_transform") if serving_transform else ServingPath(transform)
    catalog = select_bugs(bugs) if recipe is not None else []
    if loaded.data is not None and loaded.data.kind == "images":  # the user's own images and labels
        count = len(loaded.data) if max_images <= 0 else min(max_images, len(loaded.data))
        names = [f"{loaded.data.class_names[int(c)]}#{i}" for i, c in enumerate(loaded.data.labels[:count])]
        images = loaded.data.items[:count]
        labels = None if loaded.data_labels is None else np.asarray(loaded.data_labels[:count])
    else:
        names, images, labels = parity_images(loaded.family, max_images, seed)
    report = ParityReport(True, "", names, labels, recipe, catalog=catalog)
    if recipe is None:
        report.reason = ("the lab transform is not a torchvision Compose with Resize, CenterCrop and "
                         "Normalize, so the catalog cannot be derived")
    steps = [("client", c) for c in CLIENTS] + [("bug", b) for b in catalog]
    for kind, item in progress_steps(steps, "parity", "path", show=progress):
        if kind == "client":
            request_set = make_request_set(item, images, transform, loaded.module)
            report.request_sets[item] = request_set
            report.serving.append(evaluate_path("serving", serving, request_set, loaded.module, labels))
        else:
            report.bugs.append(evaluate_path(item.name, item.path(recipe), report.request_sets[item.client],
                                             loaded.module, labels))
    return report


def serving_gate(report: ParityReport, atol: float) -> dict:
    """Gate `parity:serving`: every serving tensor has the lab's shape and lies within `atol` of
    it, on every image and client; skipped when the model takes tensors, not images."""

    if not report.applies:
        return gate("parity:serving", False, None, atol, report.reason, skipped=True)
    total = len(report.names) * len(report.serving)
    differ = sum(int((r.max_abs_diff > atol).sum()) for r in report.serving)
    failed = sum(r.summary()["failed_requests"] for r in report.serving)
    reshaped = sum(r.summary()["shape_mismatches"] for r in report.serving)
    worst = report.serving_max_abs_diff
    if not differ:
        return gate("parity:serving", True, worst, atol, f"serving == lab on {len(report.names)} images "
                                                         f"x {len(report.serving)} clients")
    clients = ", ".join(r.client for r in report.serving if (r.max_abs_diff > atol).any())
    extra = "".join([f", {reshaped} with another shape" if reshaped else "", f", {failed} failed" if failed else ""])
    finite = [float(r.max_abs_diff[np.isfinite(r.max_abs_diff)].max()) for r in report.serving
              if np.isfinite(r.max_abs_diff).any()]
    return gate("parity:serving", False, worst, atol,
                f"{differ} of {total} requests differ ({clients}){extra}; "
                f"largest finite max abs diff {max(finite, default=float('nan')):.3g}")


# ---------------------------------------------------------------- diagnosis: which known bug is it?

MATCH_NAMED = 0.9  # a bug that explains this share of the serving path's difference is named as the cause


def _explained(served: torch.Tensor | None, bug: torch.Tensor | None, lab: torch.Tensor) -> float | None:
    """How much of one request's serving difference the bug reproduces: 1 - |served - bug| / |served - lab|
    (1 when the bug gives the very tensor, 0 or less when it does not help); both failing counts as 1. None
    where the serving path matches the lab, so there is nothing to explain."""
    if served is None or bug is None:
        return 1.0 if served is None and bug is None else 0.0  # one of the two failed
    if served.shape != lab.shape:
        return 1.0 if bug.shape == served.shape and torch.allclose(bug.float(), served.float(), atol=1e-5) else 0.0
    gap = float((served.float() - lab.float()).norm())
    if gap <= 1e-6:
        return None
    if bug.shape != served.shape:
        return 0.0
    return 1.0 - float((served.float() - bug.float()).norm()) / gap


def diagnose(report: ParityReport, module: torch.nn.Module | None = None) -> list[dict]:
    """Every catalogued bug ranked by how closely it reproduces the serving path under test, on the same requests
    of its client: `explained` is the mean share of each differing request's difference the bug reproduces (1:
    the very tensors), `requests` how many differing requests it was judged on. With the model (`module`), the
    whole catalog is replayed, also the bugs the `bugs` parameter left out of the report. Empty when the serving
    path matches the lab everywhere, or for a text model (its catalog is diagnosed by its own fields)."""
    if getattr(report, "kind", "image") == "text":
        return diagnose_text(report, module)
    if report.recipe is None:
        return []
    results, catalog = list(report.bugs), list(report.catalog)
    if module is not None:
        for bug in BUGS:
            if bug.name not in {r.path for r in results} and bug.client in report.request_sets:
                results.append(evaluate_path(bug.name, bug.path(report.recipe), report.request_sets[bug.client],
                                             module, report.labels))
                catalog.append(bug)
    served = {r.client: r for r in report.serving}
    rows = _ranked(report, results, {bug.name: bug for bug in catalog}, served)
    # a client whose difference no single bug reproduces exactly may be served by a path with two mistakes
    clients = {r["client"] for r in rows}
    inexact = {c for c in clients if max(r["explained"] for r in rows if r["client"] == c) < EXACT}
    if module is not None and inexact:
        pairs = [bug for bug in _pairs(rows, report) if bug.client in inexact]
        results = [evaluate_path(bug.name, bug.path(report.recipe), report.request_sets[bug.client], module,
                                 report.labels) for bug in pairs]
        rows = sorted(rows + _ranked(report, results, {bug.name: bug for bug in pairs}, served),
                      key=lambda r: -r["explained"])
    return rows


EXACT = 0.999  # a bug that reproduces this share of the difference gives the very tensors (up to float rounding)


def _ranked(report: ParityReport, results: list[PathResult], described: dict[str, Bug], served: dict) -> list[dict]:
    rows = []
    for result in results:
        lab = report.request_sets[result.client].lab_tensors
        scores = [_explained(s, b, reference) for s, b, reference in
                  zip(served[result.client].tensors, result.tensors, lab, strict=True)]
        judged = [v for v in scores if v is not None]
        if not judged:
            continue
        bug = described[result.path]
        rows.append({"bug": result.path, "client": result.client, "explained": max(-1.0, float(np.mean(judged))),
                     "requests": len(judged), "what": bug.what, "where": bug.where})
    return sorted(rows, key=lambda r: -r["explained"])


def _pairs(rows: list[dict], report: ParityReport, leaders: int = 2) -> list[Bug]:
    """Two mistakes in one service, when no single bug reproduces the difference: each of the `leaders` composable
    bugs that explain the most, paired with every other composable bug (the larger mistake of a pair ranks
    near the top on its own; the smaller one may not)."""
    by_name = {bug.name: bug for bug in BUGS}
    ranked = [r["bug"] for r in rows if r["bug"] in PARTS]
    pairs = {}
    for leader in ranked[:leaders]:
        for other in PARTS:
            bug = composed(by_name[leader], by_name[other])
            if bug is not None and bug.client in report.request_sets and f"{other} + {leader}" not in pairs:
                pairs[bug.name] = bug
    return list(pairs.values())


def signature(report: ParityReport) -> str:
    """What the serving path's difference looks like, in words, from the rgb client's tensors: failed requests, a
    shape of its own, or per channel the scale and offset of served = scale x lab + offset (least squares), and
    how much of the difference that affine map leaves unexplained (a geometric change: resize, crop, kernel)."""
    rgb = next((r for r in report.serving if r.client == "rgb"), report.serving[0] if report.serving else None)
    if rgb is None:
        return "nothing was served"
    lab = report.request_sets[rgb.client].lab_tensors
    pairs = [(s, reference) for s, reference in zip(rgb.tensors, lab, strict=True) if s is not None]
    if not pairs:
        return "every request fails: the service answers none (an HTTP 500 for each)"
    if any(s.shape != reference.shape for s, reference in pairs):
        shape = next(tuple(s.shape) for s, reference in pairs if s.shape != reference.shape)
        return f"the served tensors have another shape ({shape} where the lab has {tuple(pairs[0][1].shape)})"
    served = torch.stack([s.float() for s, _ in pairs]).transpose(0, 1).reshape(pairs[0][0].shape[0], -1)
    wanted = torch.stack([reference.float() for _, reference in pairs]).transpose(0, 1).reshape(served.shape)
    scales, offsets, residual = [], [], 0.0
    for y, x in zip(served, wanted, strict=True):
        design = torch.stack([x, torch.ones_like(x)], dim=1)
        scale, offset = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1).tolist()
        residual = max(residual, float((y - (scale * x + offset)).norm() / max(float((y - x).norm()), 1e-12)))
        scales.append(scale)
        offsets.append(offset)
    words = [f"channel {c}: scale {a:.3g}, offset {b:+.3g}"
             for c, (a, b) in enumerate(zip(scales, offsets, strict=True))]
    if residual > 0.5:
        kind = "a change of geometry or resampling (resize, crop, interpolation kernel, orientation): no per-channel " \
               "scale and offset explains it"
    elif all(abs(a - 1) < 0.02 for a in scales):
        kind = "every channel is offset by a constant; scale matches: a normalization with other statistics"
    elif len(set(round(a, 2) for a in scales)) == 1:
        kind = f"every channel is scaled by {scales[0]:.3g}: a missing or doubled scaling (/255 or Normalize's std)"
    else:
        kind = "the channels are scaled and offset each their own way: another normalization, or channels swapped"
    return f"{kind} ({'; '.join(words)}; mean offset {np.mean(offsets):+.3g})"


def diagnosis_text(report, rows: list[dict]) -> str:
    """The notebook's verdict on the serving path (an image or a text report): the catalogued bug (or bugs) that
    reproduce it, with the evidence and where it happens, or the signature when no known bug does."""
    named = [r for r in rows if r["explained"] >= MATCH_NAMED]
    if named:
        lines = [f"{r['bug']} ({r['client']} requests): reproduces {r['explained']:.1%} of the difference on "
                 f"{r['requests']} differing requests. {r['what']}; typically: {r['where']}" for r in named]
        return "the serving path matches known bug(s):\n" + "\n".join(lines)
    best = rows[0] if rows else None
    closest = f" The closest, {best['bug']}, reproduces {best['explained']:.1%}." if best else ""
    shape = text_signature(report) if getattr(report, "kind", "image") == "text" else signature(report)
    return f"no catalogued bug reproduces the serving path.{closest} Its signature: {shape}"


# ---------------------------------------------------------------- images or texts


def evaluate(loaded, lab_transform: str = "", serving_transform: str = "", bugs=("all",), max_images: int = 0,
             max_texts: int = 0, seed: int = 0, progress: bool = True):
    """The parity report of a model: texts through the tokenizer for a text model
    (lab2prod.studies.text_parity), else images through the lab transform."""
    if loaded.kind == "text":
        names = [bugs] if isinstance(bugs, str) else list(bugs)
        text_names = names if names == ["all"] else [n for n in names if n not in bug_names()]
        return evaluate_text_parity(loaded, serving_transform, text_names, max_texts, progress)
    return evaluate_parity(loaded, lab_transform, serving_transform,
                           [n for n in ([bugs] if isinstance(bugs, str) else bugs) if n == "all" or n in bug_names()],
                           max_images, seed, progress)


def parity_gate(report, atol: float) -> dict:
    """Gate `parity:serving` for either kind of report."""
    if getattr(report, "kind", "image") == "text":
        return text_serving_gate(report)
    return serving_gate(report, atol)


def chain_stage(report, atol: float, name: str = "serving transform: in process") -> dict:
    """The parity study's stage of the chain (lab2prod.studies.chain): the serving path against the lab path on
    this study's own requests (every client encoding of its images, or its texts), judged by `parity:serving`.
    For images the difference is the model's input tensors' (what the transform changed); for texts the outputs'."""
    verdict = parity_gate(report, atol)
    if not report.applies:
        return chain.failed_stage(name, "preprocess", "classifier", "", report.reason, passed=None)
    rows = [r.summary() for r in report.serving]
    text = report.kind == "text"
    embedder = text and any("min_cosine" in r for r in rows)
    inputs = (f"{len(report.names)} texts as JSON" if text else
              f"{len(report.names)} images x {len(report.serving)} client encodings")
    agreement = min((r["min_cosine"] if embedder else r["top1_agreement"]) for r in rows) if rows else None
    return chain.measured_stage(
        name, "preprocess", inputs, "encodings and outputs" if text else "model input tensors",
        "min cosine" if embedder else "top-1 agreement", agreement, verdict["value"] if not text else
        max((r["max_output_diff"] for r in rows), default=None), f"parity:serving (atol {verdict['threshold']:g})",
        verdict["passed"], "" if verdict["passed"] else verdict["detail"])


def where_serving_differs(report, atol: float) -> list[dict]:
    """Requests where the serving path differs from the lab path (worst images first; texts in order)."""
    if getattr(report, "kind", "image") == "text":
        return [row for result in report.serving for row in differing_requests(result, report)]
    return [row for result in report.serving
            for row in worst_images(result, report.names, report.request_sets[result.client], atol)]


# ---------------------------------------------------------------- tables and plots of the notebook


def parity_serving_frame(report) -> pd.DataFrame:
    """The serving path under test on each client's encoding of the images, vs the lab path; for
    a text model, its encodings and outputs vs the lab's over every text."""

    if report.kind == "text":
        columns = ["bug", "requests", "encodings_differ", "max_output_diff", "top1_agreement", "min_cosine",
                   "accuracy", "failed_requests"]
        frame = pd.DataFrame([r.summary() for r in report.serving], columns=columns)
        return frame.rename(columns={"bug": "path"}).set_index("path").dropna(axis=1, how="all")

    rows = [{**r.summary(), "client sends": CLIENTS[r.client][0]} for r in report.serving]
    columns = ["client", "client sends", "max_abs_diff", "mean_abs_diff", "top1_agreement", "accuracy",
               "failed_requests"]
    frame = pd.DataFrame(rows, columns=columns).set_index("client")
    return frame.dropna(axis=1, how="all")


def parity_bug_frame(report) -> pd.DataFrame:
    """Every catalogued bug, most harmful first, with what goes wrong and where it happens."""
    columns = ["bug", "client", "max_abs_diff", "mean_abs_diff", "top1_agreement", "accuracy",
               "accuracy_drop_pts", "failed_requests", "what", "where"]
    if report.kind == "text":
        columns = ["bug", "encodings_differ", "top1_agreement", "min_cosine", "accuracy", "accuracy_drop_pts",
                   "failed_requests", "what", "where"]
    frame = pd.DataFrame(report.bug_rows(), columns=columns).set_index("bug")
    return frame.dropna(axis=1, how="all")


def plot_parity_impact(report):
    """Horizontal bars per bug, failed requests hatched: the accuracy drop in points (labelled
    data), else top-1 disagreement with the lab in percent, else (an untrained model that
    predicts one class for everything) the mean abs tensor difference."""
    import matplotlib.pyplot as plt

    rows = report.bug_rows()
    if report.labels is not None:
        values = [r["accuracy_drop_pts"] for r in rows]
        xlabel, unit, alarm = "accuracy drop vs the lab path (points)", "", 5
    elif any(r["top1_agreement"] < 1 for r in rows):
        values = [100 * (1 - r["top1_agreement"]) for r in rows]
        xlabel, unit, alarm = "top-1 disagreement with the lab path (%)", "%", 5
    elif getattr(report, "kind", "image") == "text":
        values = [100 * r["encodings_differ"] / max(r["requests"], 1) for r in rows]
        xlabel, unit, alarm = "requests encoded differently from the lab (%; no labels, predictions never changed)", \
            "%", 5
    else:
        values = [min(r["mean_abs_diff"], 10.0) for r in rows]
        xlabel, unit, alarm = "mean |serving − lab| per element (no labels; predictions never changed)", "", 0.1
    fig, ax = plt.subplots(figsize=(7.5, 0.34 * len(rows) + 1.3))
    bars = ax.barh([r["bug"] for r in rows], values,
                   color=["#d62728" if v >= alarm else "#ff7f0e" if v > alarm / 10 else "#7f7f7f" for v in values])
    top = max(values, default=0)
    for bar, row, value in zip(bars, rows, values, strict=True):
        if row["failed_requests"]:
            bar.set_hatch("//")
        ax.text(max(value, 0) + top * 0.01, bar.get_y() + bar.get_height() / 2,
                f"{value:.3g}{unit}" + (" (requests fail)" if row["failed_requests"] else ""), va="center",
                fontsize=8)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.invert_yaxis()
    ax.set_xlim(min(0, min(values, default=0)) - top * 0.02, top * 1.35 + 1e-9)
    ax.set_xlabel(xlabel)
    ax.set_title("What each serving bug costs on this model")
    fig.tight_layout()
    return fig


def text_model_view(report, bugs: int = 5, text: int | None = None, tokens: int = 14) -> pd.DataFrame:
    """What the model sees for one text: the tokens the lab path made and those of the most
    harmful bugs that still encode it (special tokens shown, padding left out; a dot marks a
    position the attention mask hides). By default the first text whose encoding the most bugs change."""
    import numpy as np

    results = {r.path: r for r in report.bugs}
    worst = [row["bug"] for row in report.bug_rows() if row["failed_requests"] < len(report.names)][:bugs]
    if text is None:
        changed = [sum(bool(results[name].differences[i]) for name in worst) for i in range(len(report.names))]
        text = int(np.argmax(changed)) if changed else 0
    tokenizer = report.tokenizer

    def shown(encoding) -> list[str]:
        ids = encoding["input_ids"][0].tolist()
        mask = encoding.get("attention_mask", None)
        mask = mask[0].tolist() if mask is not None else [1] * len(ids)
        pieces = [(tokenizer.convert_ids_to_tokens(i), m) for i, m in zip(ids, mask, strict=True)]
        return [(p if m else f"·{p}") for p, m in pieces if p != tokenizer.pad_token or m][:tokens]

    rows = {"lab path": shown(report.lab_encodings[text])}
    for name in worst:
        encoding = results[name].encodings[text]
        rows[name] = shown(encoding) if encoding is not None else ["(request failed)"]
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    frame.index.name = f"{report.names[text]}: {report.texts[text][:50]!r}"
    return frame


def plot_model_view(report, bugs: int = 5, images: int = 3):
    """What the model sees: the lab path's input beside the motivating case, the square resize
    and the most harmful other bugs that still produce a tensor, denormalized."""
    import matplotlib.pyplot as plt


    shown = [r["bug"] for r in report.bug_rows() if r["failed_requests"] < len(report.names)]
    headline = [name for name in ("motivating_case", "square_resize") if name in shown]
    worst = (headline + [name for name in shown if name not in headline])[:bugs]
    results = {r.path: r for r in report.bugs}
    lab_set = report.request_sets["rgb"]
    picks = list(range(min(images, len(report.names))))
    columns = ["lab path"] + worst
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.1 * len(columns), 2.2 * len(picks)),
                             squeeze=False)
    for row, index in enumerate(picks):
        for col, name in enumerate(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            tensor = lab_set.lab_tensors[index] if col == 0 else results[name].tensors[index]
            if tensor is None:
                ax.text(0.5, 0.5, "request\nfailed", ha="center", va="center", color="#b00020")
            else:
                ax.imshow(viewable(tensor, report.recipe))
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(report.names[index], fontsize=7)
    fig.suptitle("What the model sees (denormalized, clipped to [0, 1])", fontsize=10)
    fig.tight_layout()
    return fig
