"""What a served model takes over HTTP, and how one request becomes its inputs.

Three kinds, picked from the model:
- image models: the request is the image file's bytes; the guard decodes them and the lab
  transform (the user's own `lab_transform`, or the recipe of the model family) makes the tensor;
- text models (a Hugging Face checkpoint): the request is JSON `{"text": "..."}`; the model's own
  tokenizer makes the ids and mask, padded as the lab padded them, and a text over the model's
  token limit is refused, never silently cut;
- tensor models (`--example-inputs`): the request is JSON of named arrays, one item without the
  batch dimension, `{"input_ids": [...], "attention_mask": [...]}` (`input` for one tensor,
  `input_0`, `input_1`... for a tuple), checked against the lab's names, dtypes and shapes.

The same codec object runs in the lab (without its guard: the lab path of live parity) and in
the TorchServe handler (with it), so the two cannot prepare a request differently. A codec
writes what it needs into the model archive (`archive`) and is rebuilt there (`from_spec`): the
source file of the user's lab transform, or the tokenizer's files.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import Lab2ProdError
from .guard import InputGuard, TensorGuard, TextGuard
from .inputs import Inputs, describe

__all__ = ["ImageCodec", "TextCodec", "TensorCodec", "codec_for", "from_spec", "answers", "lab_answer", "answer_vector",
           "request_bodies", "JSON_CONTENT_TYPE"]

JSON_CONTENT_TYPE = "application/json"
TRANSFORM_FILE = "lab2prod_transform.py"


class ImageCodec:
    """Image bytes -> a batch of one tensor: decoded like the lab (EXIF orientation, RGB), then the
    lab transform object itself; with a guard, the bytes and the tensor are checked."""

    kind, suffix, content_type = "image", ".png", "application/octet-stream"

    def __init__(self, transform, guard: InputGuard | None = None, family: str = "", transform_spec: str = ""):
        from .preprocess import ServingPath

        self.transform, self.guard, self.family, self.transform_spec = transform, guard, family, transform_spec
        self.path = ServingPath(transform, guard)

    def __call__(self, body) -> torch.Tensor:
        if isinstance(body, torch.Tensor):  # a tensor payload: only the tensor checks apply
            return (self.guard.check_tensor(body) if self.guard else body).unsqueeze(0)
        return self.path(_raw(body)).unsqueeze(0)

    def archive(self, work: Path) -> tuple[dict, list[Path]]:
        spec = {"kind": self.kind, "family": self.family, "guard": _fields(self.guard)}
        files = []
        if self.transform_spec:
            spec["transform"], files = _archive_source(self.transform_spec, work)
        return spec, files

    def hostile(self, max_bytes: int, good: bytes) -> list[tuple[str, object]]:
        from .preprocess import decode_request
        from .security import bad_inputs

        return bad_inputs(decode_request(good), max_bytes)


class TextCodec:
    """JSON `{"text": ...}` -> the model's inputs for one text through the lab's text path
    (lab2prod.text.TextPath: the lab's cleanup, then the tokenizer padded to the lab's length);
    with a guard, the body is checked and a text over the token limit is refused."""

    kind, suffix, content_type = "text", ".json", JSON_CONTENT_TYPE

    def __init__(self, path, guard: TextGuard | None = None):
        self.path, self.guard = path, guard

    @property
    def tokenizer(self):
        return self.path.tokenizer

    @property
    def max_length(self) -> int:
        return self.path.max_length

    def __call__(self, body) -> dict[str, torch.Tensor]:
        if self.guard is None:
            text = json.loads(_raw(body).decode("utf-8"))["text"] if not isinstance(body, dict) else body["text"]
        else:
            text = self.guard.check(body)
            self.guard.check_tokens(self.path.count_tokens(text))
        return self.path(text)

    def archive(self, work: Path) -> tuple[dict, list[Path]]:
        # At the archive's top level, beside the handler (the archiver flattens folders anyway).
        files = [Path(f) for f in self.tokenizer.save_pretrained(str(work)) if Path(f).is_file()]
        spec = {"kind": self.kind, "max_length": self.max_length, "tokenizer": ".", "guard": _fields(self.guard)}
        if self.path.clean_spec:
            spec["transform"], source = _archive_source(self.path.clean_spec, work)
            files += source
        return spec, files

    def hostile(self, max_bytes: int, good: bytes) -> list[tuple[str, object]]:
        limit = self.guard.max_tokens if self.guard else self.max_length
        long_text = " ".join(["word"] * (limit * 4))
        return [
            ("empty body", b""),
            ("not UTF-8", b'{"text": "caf\xe9 \xff\xfe"}'),
            ("not JSON", b"text=hello"),
            ("JSON array", b'["hello"]'),
            ("wrong key", b'{"txt": "hello"}'),
            ("extra key", b'{"text": "hello", "debug": true}'),
            ("text is a number", b'{"text": 42}'),
            ("empty text", b'{"text": "   "}'),
            ("NUL bytes", json.dumps({"text": "hello\u0000world"}).encode()),
            (f"{limit * 4} words (over {limit} tokens)", json.dumps({"text": long_text}).encode()),
            ("oversize body", json.dumps({"text": "a" * (max_bytes + 1)}).encode()),
        ]


class TensorCodec:
    """JSON of named arrays (one item) -> the model's inputs (a tensor, tuple or dict) with the
    lab's dtypes; with a guard, names, dtypes, shapes, finite values and ranges are checked."""

    kind, suffix, content_type = "tensor", ".json", JSON_CONTENT_TYPE

    def __init__(self, inputs: dict, structure: str, guard: TensorGuard | None = None):
        self.inputs, self.structure, self.guard = inputs, structure, guard

    def __call__(self, body):
        if self.guard is not None:
            arrays = self.guard.check(body)
        else:
            value = body if isinstance(body, dict) else json.loads(_raw(body).decode("utf-8"))
            arrays = {name: np.asarray(value[name]) for name in self.inputs}
        items = {name: torch.as_tensor(np.asarray(arrays[name]), dtype=getattr(torch, d["dtype"])).unsqueeze(0)
                 for name, d in self.inputs.items()}
        if self.structure == "dict":
            return items
        if self.structure == "tuple":
            return tuple(items.values())
        return items["input"]

    def archive(self, work: Path) -> tuple[dict, list[Path]]:
        return {"kind": self.kind, "inputs": self.inputs, "structure": self.structure,
                "guard": _fields(self.guard)}, []

    def hostile(self, max_bytes: int, good: bytes) -> list[tuple[str, object]]:
        value = json.loads(good)
        name = next(iter(self.inputs))
        dtype = self.inputs[name]["dtype"]

        def changed(**updates) -> bytes:
            return json.dumps({**value, **updates}).encode()

        flat = np.asarray(value[name], dtype=np.float64)
        cases = [
            ("empty body", b""),
            ("not UTF-8", b'{"' + name.encode() + b'": "\xff\xfe"}'),
            ("not JSON", b"input=1,2,3"),
            ("JSON array", json.dumps(value[name]).encode()),
            ("missing input", json.dumps({k: v for k, v in value.items() if k != name}).encode()),
            ("extra input", changed(debug=[1])),
            ("wrong shape", changed(**{name: flat.reshape(-1)[: max(1, flat.size // 2)].tolist()})),
            ("ragged list", changed(**{name: [[1, 2], [3]]})),
            ("strings", changed(**{name: "1 2 3"})),
        ]
        if dtype.startswith("float"):
            bad = flat.copy().reshape(-1)
            bad[0] = np.nan
            cases.append(("NaN value", json.dumps({**value, name: bad.reshape(flat.shape).tolist()},
                                                  allow_nan=True).encode()))
        else:
            fractions = (flat + 0.5).tolist()
            cases.append(("fractions in an integer input", changed(**{name: fractions})))
            high = (self.guard.ranges or {}).get(name, [0, 0])[1] if self.guard else 0
            out = flat.copy().reshape(-1)
            out[0] = high + 1000
            cases.append(("value out of the lab's range", changed(**{name: out.reshape(flat.shape).astype(int)
                                                                       .tolist()})))
        cases.append(("oversize body", changed(padding="x" * (max_bytes + 1))))
        return cases


def _raw(body) -> bytes:
    if isinstance(body, str):
        return body.encode("latin-1")
    return bytes(body or b"")


def _fields(guard) -> dict | None:
    from dataclasses import asdict

    return asdict(guard) if guard is not None else None


def _archive_source(spec: str, work: Path) -> tuple[dict, list[Path]]:
    """The archive entry of a user's lab transform (an image transform or a text cleanup) and its
    source file copied into `work`, so a server without the user's package can still import it."""
    entry = {"spec": spec, "file": TRANSFORM_FILE, "attr": spec.partition(":")[2]}
    source = _source_file(spec)
    if source is None:
        return entry, []
    shutil.copyfile(source, work / TRANSFORM_FILE)
    return entry, [work / TRANSFORM_FILE]


def _source_file(spec: str) -> Path | None:
    """The source file of the module a package.module:name spec names (the module itself, also
    when the name is an object such as a torchvision Compose whose class lives elsewhere)."""
    from .models import import_object

    import_object(spec, "lab_transform")  # imports the module, with a clear error when it does not
    try:
        return Path(inspect.getsourcefile(sys.modules[spec.partition(":")[0]]))
    except (KeyError, TypeError):
        return None


def _input_ranges(sample: Inputs) -> dict:
    return {name: [float(t.min()), float(t.max())] for name, t in _named(sample).items()
            if not torch.is_floating_point(t) and t.dtype != torch.bool and t.numel()}


def _named(inputs: Inputs) -> dict[str, torch.Tensor]:
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, tuple):
        return {f"input_{i}": t for i, t in enumerate(inputs)}
    return {"input": inputs}


def codec_for(loaded, guarded: bool = True, max_bytes: int = 1_000_000, z_limit: float = 5.0):
    """The codec of a loaded model: text for a model with a tokenizer, image for an image model
    (its lab transform: the user's, or the family's recipe), tensor otherwise. `guarded` adds the
    input guard with limits from the lab's own inputs (shape, statistics, ranges)."""
    if loaded.text_path is not None:
        path = loaded.text_path
        return TextCodec(path, TextGuard(max_bytes=max_bytes, max_tokens=path.max_length) if guarded else None)
    if loaded.takes_images:
        from .guard import lab_input_stats
        from .preprocess import lab_transform_for

        transform, _ = lab_transform_for(loaded.family, loaded.lab_transform)
        guard = InputGuard(max_bytes=max_bytes, expected_shape=tuple(loaded.input_shape), z_limit=z_limit,
                           lab_stats=lab_input_stats(loaded.make_inputs(256, 0, "train"))) if guarded else None
        return ImageCodec(transform, guard, loaded.family, loaded.lab_transform)
    sample = loaded.make_inputs(256, 0, "train")
    structure = "dict" if isinstance(sample, dict) else ("tuple" if isinstance(sample, tuple) else "tensor")
    inputs = describe(sample)
    return TensorCodec(inputs, structure, TensorGuard(inputs, max_bytes, _input_ranges(sample)) if guarded else None)


def from_spec(spec: dict, model_dir: str | Path):
    """Rebuild a codec inside the server from the archive's lab2prod.json and files."""
    model_dir = Path(model_dir)
    guard = spec.get("guard")
    if spec["kind"] == "text":
        from transformers import AutoTokenizer

        from .text import TextPath

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir / spec["tokenizer"]), local_files_only=True)
        clean_spec = (spec.get("transform") or {}).get("spec", "")
        clean = _imported_transform(spec["transform"], model_dir) if clean_spec else None
        guard = TextGuard(**guard) if guard else None
        return TextCodec(TextPath(tokenizer, spec["max_length"], clean, clean_spec), guard)
    if spec["kind"] == "tensor":
        return TensorCodec(spec["inputs"], spec["structure"], TensorGuard(**guard) if guard else None)
    if guard and guard.get("expected_shape") is not None:
        guard = {**guard, "expected_shape": tuple(guard["expected_shape"]),
                 "allowed_formats": tuple(guard["allowed_formats"]), "allowed_modes": tuple(guard["allowed_modes"]),
                 "value_range": tuple(guard["value_range"])}
    from .preprocess import lab_transform_for

    transform_spec = (spec.get("transform") or {}).get("spec", "")
    if transform_spec:
        transform = _imported_transform(spec["transform"], model_dir)
    else:
        transform, _ = lab_transform_for(spec["family"])
    return ImageCodec(transform, InputGuard(**guard) if guard else None, spec["family"], transform_spec)


def _imported_transform(entry: dict, model_dir: Path):
    """The user's lab transform by its name where the user's package is installed, else from the
    source file the archive carries; the import error when neither works."""
    from .preprocess import load_transform

    try:
        return load_transform(entry["spec"], "lab_transform")
    except Lab2ProdError:  # the user's package is not installed where the server runs
        transform = _archived_transform(entry, model_dir)
        if transform is None:
            raise
        return transform


def _archived_transform(entry: dict, model_dir: Path):
    """The user's lab transform from the source file the archive carries, for a server where the
    user's package is not installed; None when the file is absent or does not import on its own."""
    file = model_dir / entry["file"]
    if not file.exists():
        return None
    module_spec = importlib.util.spec_from_file_location("lab2prod_archived_transform", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        obj = module
        for part in entry["attr"].split("."):
            obj = getattr(obj, part)
        return obj
    except Exception:
        return None


def answers(task: str, outputs: torch.Tensor) -> list[dict]:
    """What the server returns per request: top-1 and class probabilities for a classifier, the
    vector for an embedder."""
    outputs = outputs.float().cpu()
    if task == "embedder":
        return [{"embedding": row.tolist()} for row in outputs.reshape(outputs.shape[0], -1)]
    probabilities = torch.softmax(outputs, dim=1)
    return [{"top1": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]


def lab_answer(module, lab, body, task: str) -> torch.Tensor:
    """What the served model should answer for one request body, computed in process through
    the codec `lab`: class probabilities for a classifier, the vector for an embedder."""
    from .inputs import call, first_tensor

    out = first_tensor(call(module, lab(body))).float()[0]
    return out if task == "embedder" else torch.softmax(out, dim=0)


def answer_vector(payload: dict) -> torch.Tensor:
    """The vector in a served answer: probabilities or the embedding."""
    return torch.tensor(payload["embedding"] if "embedding" in payload else payload["probabilities"])


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, body) of what clients send for this model: held-out images as PNG bytes (the user's
    images with --data), texts as JSON (the user's texts, or the bundled sample), or tensor items
    as JSON of named arrays."""
    from .inputs import draw_indices

    if loaded.text_path is not None:
        from .hf import SAMPLE_TEXTS

        texts = list(loaded.data.items) if loaded.data is not None and loaded.data.kind == "texts" else SAMPLE_TEXTS
        picks = draw_indices(len(texts), min(count, len(texts)), seed, "test")
        return [(f"text#{i}", json.dumps({"text": texts[i]}).encode()) for i in picks]
    if loaded.takes_images:
        from .parity import encode_request, parity_images

        if loaded.data is not None and loaded.data.kind == "images":
            picks = draw_indices(len(loaded.data), min(count, len(loaded.data)), seed, "test")
            named = [(f"{loaded.data.path}#{i}", loaded.data.items[i]) for i in picks]
        else:
            names, images, _ = parity_images(loaded.family, count, seed)
            named = list(zip(names, images, strict=True))
        return [(name, encode_request(image, "rgb")[0]) for name, image in named]
    sample = loaded.make_inputs(count, seed, "test")
    rows = _named(sample)
    return [(f"item#{i}", json.dumps({name: t[i].tolist() for name, t in rows.items()}).encode())
            for i in range(count)]

