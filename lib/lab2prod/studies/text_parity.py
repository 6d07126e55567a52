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
import string
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.results import gate
from lab2prod.kinds.codec import codec_for
from lab2prod.kinds.preprocess import load_transform
from lab2prod.kinds.text import ENCODING_KEYS, TextPath
from lab2prod.models.hf import SAMPLE_TEXTS

__all__ = ["TextBug", "TEXT_BUGS", "TextContext", "text_bug_names", "select_text_bugs", "TextResult",
           "TextParityReport", "evaluate_text_parity", "text_serving_gate", "request_body", "differing_requests"]


def request_body(text: str) -> bytes:
    """What a client sends for `text`: JSON, UTF-8 (non-ASCII characters as themselves)."""
    return json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")


def _text(body: bytes) -> str:
    return json.loads(body.decode("utf-8"))["text"]


@dataclass
class TextContext:
    """What a bug needs besides the request: the lab's text path and, for the bugs that load other
    tokenizer files, where the model's tokenizer is (its vocabulary) and an older tokenizer."""

    path: TextPath
    older_tokenizer: str = ""  # a folder with an older tokenizer of the same model, when there is one
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def tokenizer(self):
        return self.path.tokenizer

    def tokenize(self, text: str, tokenizer=None, **settings) -> dict[str, torch.Tensor]:
        """`text` (already prepared) through `tokenizer` (default the lab's) with the lab's settings
        changed by `settings`."""
        tokenizer = tokenizer or self.tokenizer
        kwargs = {"padding": "max_length", "truncation": True, "max_length": self.path.max_length,
                  "return_tensors": "pt", **settings}
        encoded = tokenizer(text, **kwargs)
        return {k: v for k, v in encoded.items() if k in ENCODING_KEYS}

    def with_sides(self, text: str, truncation_side: str = "right", padding_side: str = "right", **settings):
        tokenizer = self.tokenizer
        before = tokenizer.truncation_side, tokenizer.padding_side
        tokenizer.truncation_side, tokenizer.padding_side = truncation_side, padding_side
        try:
            return self.tokenize(text, **settings)
        finally:
            tokenizer.truncation_side, tokenizer.padding_side = before

    def wordpiece_vocab(self) -> Path | None:
        """A vocab.txt of the lab tokenizer (one token per line, by id) when it is WordPiece."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or type(backend.model).__name__ != "WordPiece":
            return None
        if "vocab" not in self._cache:
            folder = Path(tempfile.mkdtemp(prefix="lab2prod-vocab-"))
            vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
            self._cache["vocab"] = folder / "vocab.txt"
        return self._cache["vocab"]

    def other_tokenizer(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@dataclass(frozen=True)
class TextBug:
    """A real text serving mistake: `fn(request_bytes, context) -> encoding`; `example` is a text
    that exposes it (its encoding must differ from the lab's); `applies(context)` says whether the
    model has what the bug needs (a lab cleanup, a WordPiece vocabulary, an older tokenizer)."""

    name: str
    what: str  # what goes wrong, in one line
    where: str  # where it happens in practice, and where it was reported
    fn: Callable[[bytes, TextContext], dict] = field(repr=False)
    example: str = ""
    applies: Callable[[TextContext], bool] = field(default=lambda ctx: True, repr=False)


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _torchserve_text_classifier(text: str) -> str:
    # ts/torch_handler/text_classifier.py preprocess: HTML tags and entities removed, lower case,
    # (English contractions expanded: a no-op for most text), accents removed via NFKD + ASCII,
    # punctuation removed.
    import re

    text = re.sub(r"<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});", "", text).lower()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")
    return text.translate(str.maketrans("", "", string.punctuation))


def _legacy_bert(ctx: TextContext):
    from transformers import BertTokenizerLegacy

    return BertTokenizerLegacy(str(ctx.wordpiece_vocab()))  # its defaults: do_lower_case=True


def _older(ctx: TextContext):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ctx.older_tokenizer, local_files_only=True)


def _no_mask(ctx: TextContext, body: bytes) -> dict:
    encoded = ctx.path(_text(body))
    return {**encoded, "attention_mask": torch.ones_like(encoded["attention_mask"])}


def _type_ids_ones(ctx: TextContext, body: bytes) -> dict:
    encoded = ctx.path(_text(body))
    return {**encoded, "token_type_ids": torch.ones_like(encoded["input_ids"])}


LONG_EXAMPLE = ("Der Hund läuft schnell über die Straße, weil die Kinder im Garten spielen und der Nachbar laut "
                "ruft, aber niemand hört ihn heute Abend.")

TEXT_BUGS: list[TextBug] = [
    TextBug("max_length_16", "texts cut to 16 tokens (and padded to 16) instead of the lab's length",
            "a max_length copied from another model's config or a latency shortcut; TorchServe's "
            "Huggingface_Transformers example takes max_length from setup_config.json",
            lambda b, ctx: ctx.tokenize(ctx.path.prepare(_text(b)), max_length=16), LONG_EXAMPLE),
    TextBug("truncation_left_24", "the last 24 tokens kept instead of the first ones",
            "truncation_side='left' saved with a decoder model's tokenizer and reused, with a shorter "
            "max_length (huggingface/tokenizers#1786)",
            lambda b, ctx: ctx.with_sides(ctx.path.prepare(_text(b)), truncation_side="left", max_length=24),
            LONG_EXAMPLE),
    TextBug("lowercased", "text lower-cased before a cased tokenizer",
            "an uncased habit (text.lower()) carried to a cased checkpoint (huggingface/transformers#3823)",
            lambda b, ctx: ctx.tokenize(ctx.path.prepare(_text(b)).lower()), "Berlin und Paris"),
    TextBug("uncased_normalizer", "lower case and accents stripped, as an uncased BERT normalizer does",
            "the tokenizer of the uncased base model served with a cased fine-tune",
            lambda b, ctx: ctx.tokenize(_strip_accents(ctx.path.prepare(_text(b)).lower())), "Żółw jest zielony"),
    TextBug("legacy_tokenizer_defaults", "the Python BertTokenizer built from vocab.txt with its defaults "
            "(do_lower_case=True)", "BertTokenizer(vocab_file) in a handler, where the lab loaded "
            "tokenizer.json; a cased model is lowercased (huggingface/transformers#343, jina-ai/clip-as-service#328)",
            lambda b, ctx: ctx.tokenize(ctx.path.prepare(_text(b)),
                                        ctx.other_tokenizer("legacy", lambda: _legacy_bert(ctx))),
            "Straße in München", lambda ctx: ctx.wordpiece_vocab() is not None),
    TextBug("accents_stripped", "accents removed (é -> e, ł kept as ł)",
            "an 'ASCII-safe' sanitizer (NFD, drop combining marks) in front of the model",
            lambda b, ctx: ctx.tokenize(_strip_accents(ctx.path.prepare(_text(b)))), "Café à côté"),
    TextBug("no_special_tokens", "no [CLS]/[SEP] (or BOS/EOS) around the text",
            "tokenizer(text, add_special_tokens=False), or ids built with convert_tokens_to_ids(tokenize(text))",
            lambda b, ctx: ctx.tokenize(ctx.path.prepare(_text(b)), add_special_tokens=False), "Hello world"),
    TextBug("attention_mask_dropped", "no attention mask: the padding is attended",
            "model(input_ids) alone in a handler, or a mask lost when inputs are packed for an ONNX/Triton call",
            lambda b, ctx: _no_mask(ctx, b), "Hello world"),
    TextBug("token_type_ids_ones", "token type ids all ones (segment B) instead of zeros",
            "a pair-input template or a hand-built token_type_ids in a handler",
            lambda b, ctx: _type_ids_ones(ctx, b), "Hello world"),
    TextBug("left_padding", "padding on the left instead of the right",
            "padding_side='left' (a decoder's setting) on an encoder with absolute positions",
            lambda b, ctx: ctx.with_sides(ctx.path.prepare(_text(b)), padding_side="left"), "Hello world"),
    TextBug("unicode_nfkd", "text normalized to NFKD (accents decomposed, ligatures split) instead of NFC",
            "a Unicode 'sanitize' step in the gateway; macOS clients also send decomposed text",
            lambda b, ctx: ctx.tokenize(unicodedata.normalize("NFKD", ctx.path.prepare(_text(b)))), "Ångström ﬁle"),
    TextBug("no_lab_cleanup", "the lab's text cleanup skipped: HTML, entities and extra whitespace reach the "
            "tokenizer", "the cleanup lived in the training script's dataset.map(), not in the model's folder",
            lambda b, ctx: ctx.tokenize(_text(b)), "<p>Hello&nbsp;world</p>", lambda ctx: ctx.path.clean is not None),
    TextBug("proxy_cut_64_chars", "text cut to 64 characters before it reaches the model",
            "a field limit in a form, queue or API gateway (varchar(64), a log-derived message)",
            lambda b, ctx: ctx.path(_text(b)[:64]), LONG_EXAMPLE),
    TextBug("latin1_decoded", "UTF-8 body decoded as Latin-1: mojibake (é -> Ã©)",
            "a handler calling body.decode('latin-1'), or requests' r.text guessing ISO-8859-1 for text/* "
            "without a charset",
            lambda b, ctx: ctx.path(json.loads(b.decode("latin-1"))["text"]), "Café"),
    TextBug("older_vocabulary", "an older tokenizer (another vocabulary) with the new model",
            "the tokenizer files of a previous model version baked into the serving image",
            lambda b, ctx: ctx.tokenize(ctx.path.prepare(_text(b)), ctx.other_tokenizer("older", lambda: _older(ctx))),
            "Hello world", lambda ctx: bool(ctx.older_tokenizer)),
    TextBug("torchserve_text_classifier", "TorchServe's text_classifier preprocessing: HTML removed, lower case, "
            "accents and punctuation removed", "ts/torch_handler/text_classifier.py's preprocess reused for a "
            "transformers checkpoint",
            lambda b, ctx: ctx.tokenize(_torchserve_text_classifier(_text(b))), "Straße, bitte!"),
]


def text_bug_names() -> list[str]:
    return [bug.name for bug in TEXT_BUGS]


def select_text_bugs(names) -> list[TextBug]:
    """The catalogued text bugs named in `names` ("all" or a list), in catalog order."""
    names = [names] if isinstance(names, str) else list(names)
    if names == ["all"]:
        return list(TEXT_BUGS)
    unknown = [n for n in names if n not in text_bug_names()]
    if unknown:
        raise Lab2ProdError(f"text bugs {unknown} are not catalogued; use 'all' or some of "
                            f"{', '.join(text_bug_names())}")
    return [bug for bug in TEXT_BUGS if bug.name in names]


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
        encoded = transform(_text(body))
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
    from tqdm import tqdm


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
    report = TextParityReport(True, "", names, texts, labels, lab_encodings=lab, tokenizer=loaded.tokenizer)
    report.catalog = [b for b in catalog if b.applies(ctx)]
    report.skipped = {b.name: "needs " + {"legacy_tokenizer_defaults": "a WordPiece vocabulary",
                                          "no_lab_cleanup": "a lab cleanup (lab_transform)",
                                          "older_vocabulary": "an older tokenizer beside the model"}.get(b.name, "more")
                      for b in catalog if not b.applies(ctx)}
    steps = [("serving", serving)] + [(b.name, lambda body, b=b: b.fn(body, ctx)) for b in report.catalog]
    for name, path in tqdm(steps, desc="text parity", unit="path", disable=not progress):
        result = _run(name, path, requests, lab, lab_outputs, loaded.module, labels, loaded.task)
        (report.serving if name == "serving" else report.bugs).append(result)
    return report


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
