"""Preprocessing parity for text models: the serving tokenization against the lab's, and a catalog
of real text serving bugs measured on the same requests.

A request is what a client sends: the UTF-8 bytes of JSON `{"text": ...}`. The lab path is the
model's `TextPath` (the lab's cleanup, then its tokenizer with its settings) on the decoded
text. A serving path (lab2prod's codec by default, or the user's `serving_transform`, a
callable taking the text and returning the encoding) is compared with it request by request:
the ids, attention mask, token type ids and length, then the model's outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.kinds.codec import codec_for
from lab2prod.kinds.preprocess import load_transform
from lab2prod.kinds.text import ENCODING_KEYS
from lab2prod.kinds.text_bugs import TEXT_BUGS, TextBug, TextContext, request_text, select_text_bugs, text_bug_names
from lab2prod.models.hf import SAMPLE_TEXTS

__all__ = ["TextBug", "TEXT_BUGS", "TextContext", "text_bug_names", "select_text_bugs", "TextResult",
           "TextParityReport", "evaluate_text_parity", "text_serving_gate", "request_body", "differing_requests",
           "diagnose_text", "text_signature"]


def request_body(text: str) -> bytes:
    """What a client sends for `text`: JSON, UTF-8 (non-ASCII characters as themselves)."""
    return json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------- comparing encodings


def encoding_difference(encoding: dict | None, lab: dict) -> str:
    """'' when `encoding` equals the lab's (same keys, shapes and values), else what differs first:
    "failed", "keys", "length 16 vs 72", "input_ids", "attention_mask" or "token_type_ids"."""
    if encoding is None:
        return "failed"
    keys = {k for k in encoding if k in ENCODING_KEYS}
    if keys != set(lab):
        return "keys " + ",".join(sorted(keys ^ set(lab)))
    if tuple(encoding["input_ids"].shape) != tuple(lab["input_ids"].shape):
        return f"length {encoding['input_ids'].shape[-1]} vs {lab['input_ids'].shape[-1]}"
    for key in ENCODING_KEYS:
        if key in lab and not torch.equal(encoding[key].to(lab[key].dtype), lab[key]):
            return key
    return ""


def _outputs(module, encodings: list, batch_size: int = 64) -> list:
    """The model's outputs (float rows) per encoding; None where the encoding or the model failed.
    Encodings of the lab's keys and length go in batches."""
    outputs: list = [None] * len(encodings)
    groups: dict = {}
    for i, enc in enumerate(encodings):
        if enc is not None:
            groups.setdefault((tuple(sorted(enc)), tuple(enc["input_ids"].shape)), []).append(i)
    with torch.inference_mode():
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch = {k: torch.cat([encodings[i][k] for i in chunk]) for k in encodings[chunk[0]]}
                try:
                    rows = module(**batch).float()
                except Exception:
                    rows = None
                for j, i in enumerate(chunk):
                    outputs[i] = rows[j] if rows is not None else None
    return outputs


@dataclass
class TextResult:
    """One serving path on every request, compared with the lab path request by request."""

    path: str
    differences: list[str]  # per request: '' when the encoding equals the lab's
    errors: list
    outputs: list  # per request: the model's output row, None when it failed
    lab_outputs: list
    labels: np.ndarray | None
    task: str = "classifier"
    encodings: list = field(default_factory=list, repr=False)

    @property
    def predictions(self) -> np.ndarray:
        return np.asarray([-1 if o is None else int(o.argmax()) for o in self.outputs])

    @property
    def lab_predictions(self) -> np.ndarray:
        return np.asarray([int(o.argmax()) for o in self.lab_outputs])

    def output_diff(self) -> np.ndarray:
        """Per request: max abs difference of the outputs (probabilities for a classifier), inf on failure."""
        rows = []
        for out, lab in zip(self.outputs, self.lab_outputs, strict=True):
            if out is None or out.shape != lab.shape:
                rows.append(float("inf"))
            elif self.task == "classifier":
                rows.append(float((torch.softmax(out, 0) - torch.softmax(lab, 0)).abs().max()))
            else:
                rows.append(float((out - lab).abs().max()))
        return np.asarray(rows)

    def cosines(self) -> np.ndarray:
        """Per request: cosine similarity of the output with the lab's (-1 on failure)."""
        return np.asarray([-1.0 if out is None or out.shape != lab.shape else
                           float(torch.nn.functional.cosine_similarity(out.flatten(), lab.flatten(), dim=0))
                           for out, lab in zip(self.outputs, self.lab_outputs, strict=True)])

    def summary(self) -> dict:
        differ = sum(bool(d) for d in self.differences)
        row = {
            "bug": self.path,
            "encodings_differ": differ,
            "requests": len(self.differences),
            "max_output_diff": float(self.output_diff().max()) if self.differences else 0.0,
            "top1_agreement": float((self.predictions == self.lab_predictions).mean()),
            "accuracy": None,
            "lab_accuracy": None,
            "accuracy_drop_pts": None,
            "failed_requests": sum(e is not None for e in self.errors),
        }
        if self.task == "embedder":  # vectors: agreement is a cosine of at least 0.99 with the lab's
            cosines = self.cosines()
            row.update(top1_agreement=float((cosines >= 0.99).mean()), min_cosine=float(cosines.min()))
        if self.labels is not None:
            accuracy = float((self.predictions == self.labels).mean())
            lab_accuracy = float((self.lab_predictions == self.labels).mean())
            row.update(accuracy=accuracy, lab_accuracy=lab_accuracy,
                       accuracy_drop_pts=round(100 * (lab_accuracy - accuracy), 2))
        return row


@dataclass
class TextParityReport:
    """Everything the parity notebook shows for a text model."""

    applies: bool
    reason: str
    names: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    serving: list[TextResult] = field(default_factory=list)
    bugs: list[TextResult] = field(default_factory=list)
    catalog: list[TextBug] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # bug -> why it does not apply to this model
    lab_encodings: list = field(default_factory=list, repr=False)
    tokenizer: object = field(default=None, repr=False)
    kind: str = "text"
    context: TextContext | None = field(default=None, repr=False)  # what the catalog's bugs replay with
    requests: list = field(default_factory=list, repr=False)

    @property
    def serving_max_abs_diff(self) -> float:
        return max((float(r.output_diff().max()) for r in self.serving if r.differences), default=0.0)

    @property
    def lab_accuracy(self) -> float | None:
        if not self.serving or self.labels is None:
            return None
        return float((self.serving[0].lab_predictions == self.labels).mean())

    def bug_rows(self) -> list[dict]:
        """One summary per bug with its description, most harmful first: by accuracy drop where
        there are labels, then by disagreement with the lab, then by encodings that differ."""
        described = {bug.name: bug for bug in self.catalog}
        rows = [{**r.summary(), "what": described[r.path].what, "where": described[r.path].where}
                for r in self.bugs]

        def impact(row):
            drop = row["accuracy_drop_pts"] if row["accuracy_drop_pts"] is not None else 0.0
            return (-drop, row["top1_agreement"], -row["encodings_differ"])

        return sorted(rows, key=impact)


def _run(name: str, path: Callable[[bytes], dict], requests: list[bytes], lab: list[dict], lab_outputs: list,
         module, labels, task: str) -> TextResult:
    encodings, errors = [], []
    for body in requests:
        try:
            encoded = path(body)
            encodings.append({k: v for k, v in dict(encoded).items() if k in ENCODING_KEYS})
            errors.append(None)
        except Exception as exc:
            encodings.append(None)
            message = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            errors.append(f"{type(exc).__name__}: {message}")
    differences = [encoding_difference(e, lab_e) for e, lab_e in zip(encodings, lab, strict=True)]
    outputs = [lab_outputs[i] if not d else o
               for i, (d, o) in enumerate(zip(differences, _outputs(module, [e if d else None for e, d in
                                                                           zip(encodings, differences, strict=True)]),
                                              strict=True))]
    return TextResult(name, differences, errors, outputs, lab_outputs, labels, task, encodings)


def _user_serving(transform: Callable) -> Callable[[bytes], dict]:
    """The user's serving transform (text -> encoding) on a request body."""
    def path(body: bytes) -> dict:
        encoded = transform(request_text(body))
        return {k: torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v for k, v in dict(encoded).items()}

    return path


def parity_texts(loaded, max_texts: int = 0) -> tuple[list[str], list[str], np.ndarray | None]:
    """(names, texts, labels): the model's labelled texts (the reference's held-out sentences or
    the user's --data), else the bundled sample texts without labels."""

    if loaded.data is not None and loaded.data.kind == "texts":
        texts = list(loaded.data.items)
        labels = None if loaded.data_labels is None else np.asarray(loaded.data_labels)
    else:
        texts, labels = list(SAMPLE_TEXTS), None
    count = len(texts) if max_texts <= 0 else min(max_texts, len(texts))
    return [f"text#{i}" for i in range(count)], texts[:count], None if labels is None else labels[:count]


def evaluate_text_parity(loaded, serving_transform: str = "", bugs=("all",), max_texts: int = 0,
                         progress: bool = True) -> TextParityReport:
    """Compare the serving path (lab2prod's text codec, or the user's `serving_transform`,
    text -> encoding) with the lab path on every text, and every selected bug that applies."""


    if loaded.text_path is None:
        return TextParityReport(False, f"model {loaded.spec!r} has no tokenizer; text parity needs a text model")
    serving = (_user_serving(load_transform(serving_transform, "serving_transform")) if serving_transform
               else codec_for(loaded, guarded=False))
    folder = getattr(loaded.tokenizer, "name_or_path", "")
    older = str(Path(folder) / "older-tokenizer") if folder and (Path(folder) / "older-tokenizer").is_dir() else ""
    ctx = TextContext(loaded.text_path, older)
    names, texts, labels = parity_texts(loaded, max_texts)
    requests = [request_body(t) for t in texts]
    lab = [loaded.text_path(t) for t in texts]
    lab_outputs = _outputs(loaded.module, lab)
    catalog = select_text_bugs(bugs)
    report = TextParityReport(True, "", names, texts, labels, lab_encodings=lab, tokenizer=loaded.tokenizer,
                              context=ctx, requests=requests)
    report.catalog = [b for b in catalog if b.applies(ctx)]
    report.skipped = {b.name: "needs " + {"legacy_tokenizer_defaults": "a WordPiece vocabulary",
                                          "no_lab_cleanup": "a lab cleanup (lab_transform)",
                                          "older_vocabulary": "an older tokenizer beside the model"}.get(b.name, "more")
                      for b in catalog if not b.applies(ctx)}
    steps = [("serving", serving)] + [(b.name, lambda body, b=b: b.fn(body, ctx)) for b in report.catalog]
    for name, path in progress_steps(steps, "text parity", "path", show=progress):
        result = _run(name, path, requests, lab, lab_outputs, loaded.module, labels, loaded.task)
        (report.serving if name == "serving" else report.bugs).append(result)
    return report


def _same_encoding(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return encoding_difference(a, b) == "" and set(a) == set(b)


def diagnose_text(report: TextParityReport, module=None) -> list[dict]:
    """Every applicable text bug ranked by the share of differing requests on which its encoding is the serving
    path's, exactly (ids, mask, type ids, length; both failing counts). With the model (`module`), the whole
    catalog is replayed, also the bugs the `bugs` parameter left out. Empty when the serving path matches."""
    if not report.applies or not report.serving:
        return []
    served = report.serving[0]
    differing = [i for i, d in enumerate(served.differences) if d]
    if not differing:
        return []
    results, catalog = list(report.bugs), list(report.catalog)
    if module is not None and report.context is not None:
        lab_outputs = served.lab_outputs
        for bug in TEXT_BUGS:
            if bug.name not in {r.path for r in results} and bug.applies(report.context):
                results.append(_run(bug.name, lambda body, b=bug: b.fn(body, report.context), report.requests,
                                    report.lab_encodings, lab_outputs, module, report.labels, served.task))
                catalog.append(bug)
    described = {bug.name: bug for bug in catalog}
    rows = []
    for result in results:
        same = [_same_encoding(served.encodings[i], result.encodings[i]) for i in differing]
        bug = described[result.path]
        rows.append({"bug": result.path, "client": "json", "explained": float(np.mean(same)),
                     "requests": len(differing), "what": bug.what, "where": bug.where})
    return sorted(rows, key=lambda r: -r["explained"])


def text_signature(report: TextParityReport) -> str:
    """What differs between the served and the lab encodings, by field, over the texts: the field that differs
    first on each text (length, input_ids, attention_mask, token_type_ids, keys, failed), counted."""
    from collections import Counter

    counts = Counter(d for d in report.serving[0].differences if d)
    return "; ".join(f"{what} on {n} of {len(report.names)} texts" for what, n in counts.most_common())


def differing_requests(result: TextResult, report: TextParityReport, limit: int = 10) -> list[dict]:
    """The requests whose encoding differs from the lab's, in request order: which text, what
    differs, the tokens each side made (as ids, first 12), and the two predictions."""
    rows = []
    for i, diff in enumerate(result.differences):
        if not diff:
            continue
        enc = result.encodings[i]
        rows.append({
            "request": report.names[i],
            "text": report.texts[i][:60] + ("…" if len(report.texts[i]) > 60 else ""),
            "differs in": diff,
            "serving ids": None if enc is None else _ids(enc),
            "lab ids": _ids(report.lab_encodings[i]),
            "prediction": int(result.predictions[i]),
            "lab_prediction": int(result.lab_predictions[i]),
            "error": result.errors[i],
        })
        if len(rows) >= limit:
            break
    return rows


def _ids(encoding: dict, count: int = 12) -> str:
    ids = encoding["input_ids"][0].tolist()
    mask = encoding.get("attention_mask")
    real = [t for t, m in zip(ids, mask[0].tolist() if mask is not None else [1] * len(ids), strict=True) if m]
    return " ".join(map(str, real[:count])) + (" …" if len(real) > count else "") + f" ({len(real)} of {len(ids)})"


def text_serving_gate(report: TextParityReport) -> dict:
    """Gate `parity:serving` for a text model: every request's serving encoding is the lab's
    (keys, length, ids, mask, token type ids) and the model's outputs are equal."""

    if not report.applies:
        return gate("parity:serving", False, None, 0.0, report.reason, skipped=True)
    result = report.serving[0]
    differ = [i for i, d in enumerate(result.differences) if d]
    worst = report.serving_max_abs_diff
    if not differ:
        return gate("parity:serving", True, worst, 0.0, f"serving encodings == lab on {len(report.names)} texts "
                                                        "(ids, mask, token types, length); outputs equal")
    kinds = sorted({result.differences[i].split(" ")[0] for i in differ})
    failed = sum(e is not None for e in result.errors)
    changed = int((result.predictions != result.lab_predictions).sum())
    listed = ", ".join(report.names[i] for i in differ[:5]) + (" …" if len(differ) > 5 else "")
    return gate("parity:serving", False, worst, 0.0,
                f"{len(differ)} of {len(report.names)} requests encoded differently ({', '.join(kinds)}): {listed}; "
                f"{changed} predictions changed" + (f", {failed} failed" if failed else ""))
