"""The text kind: a request is JSON `{"text": "..."}`; the codec runs it through the lab's text path
(lab2prod.kinds.text_path), behind the text guard. Its serving-bug catalog is lab2prod.kinds.text_bugs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lab2prod.kinds.base import JSON_CONTENT_TYPE, Kind, archive_source, guard_fields, imported_transform, raw_body
from lab2prod.kinds.guard import TextGuard
from lab2prod.kinds.text_bugs import TEXT_BUGS
from lab2prod.kinds.text_path import ENCODING_KEYS, TextPath, clean_text

__all__ = ["TextPath", "clean_text", "ENCODING_KEYS", "TextCodec", "text_features", "KIND"]

class TextCodec:
    """JSON `{"text": ...}` -> the model's inputs for one text through the lab's text path
    (lab2prod.kinds.text.TextPath: the lab's cleanup, then the tokenizer padded to the lab's length);
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
            text = json.loads(raw_body(body).decode("utf-8"))["text"] if not isinstance(body, dict) else body["text"]
        else:
            text = self.guard.check(body)
            self.guard.check_tokens(self.path.count_tokens(text))
        return self.path(text)

    def archive(self, work: Path) -> tuple[dict, list[Path]]:
        # At the archive's top level, beside the handler (the archiver flattens folders anyway).
        files = [Path(f) for f in self.tokenizer.save_pretrained(str(work)) if Path(f).is_file()]
        spec = {"kind": self.kind, "max_length": self.max_length, "tokenizer": ".", "guard": guard_fields(self.guard)}
        if self.path.clean_spec:
            spec["transform"], source = archive_source(self.path.clean_spec, work)
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


def codec_for_model(loaded, guarded: bool = True, max_bytes: int = 1_000_000, z_limit: float = 5.0) -> TextCodec:
    """The text codec of a model with a tokenizer: the lab's text path, and a guard whose token limit
    is the lab's length."""
    path = loaded.text_path
    return TextCodec(path, TextGuard(max_bytes=max_bytes, max_tokens=path.max_length) if guarded else None)


def codec_from_spec(spec: dict, model_dir: Path) -> TextCodec:
    """The text codec rebuilt inside the server from the tokenizer files and cleanup the archive carries."""
    from transformers import AutoTokenizer  # heavy optional third-party package (the hf extra)

    guard = spec.get("guard")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / spec["tokenizer"]), local_files_only=True)
    clean_spec = (spec.get("transform") or {}).get("spec", "")
    clean = imported_transform(spec["transform"], model_dir) if clean_spec else None
    return TextCodec(TextPath(tokenizer, spec["max_length"], clean, clean_spec), TextGuard(**guard) if guard else None)


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Held-out texts as a client sends them: JSON {"text": ...}."""
    return [(name, json.dumps({"text": text}).encode()) for name, text in loaded.examples(count, seed)]


def text_features(texts: list[str]) -> np.ndarray:
    """Per text: characters, words, and the shares of upper-case letters, digits and non-ASCII characters."""
    rows = []
    for text in texts:
        n = max(len(text), 1)
        rows.append([len(text), len(text.split()), sum(c.isupper() for c in text) / n,
                     sum(c.isdigit() for c in text) / n, sum(ord(c) > 127 for c in text) / n])
    return np.asarray(rows, dtype=np.float64)


KIND = Kind("text", 'JSON {"text": "..."}', codec_for_model, codec_from_spec, request_bodies, tuple(TEXT_BUGS),
            text_features)
