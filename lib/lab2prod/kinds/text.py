"""The text serving path: a text to the model's inputs, through the lab's own cleanup and tokenizer.

For a text model the serving path is the tokenizer (and whatever the lab did to a text before
it), and it goes wrong in as many ways as image preprocessing does. `TextPath` is the one object
that does it, in the lab (the inputs of every study), in live parity and in the TorchServe
handler, so the two cannot tokenize differently: the lab's cleanup (a `str -> str` callable,
the `lab_transform` of a text model), then the tokenizer with the lab's settings (truncation to
`max_length`, padding to `max_length` on the tokenizer's side, special tokens, attention mask
and token type ids as the tokenizer makes them).
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import torch

from lab2prod.kinds.base import JSON_CONTENT_TYPE, Kind, archive_source, guard_fields, imported_transform, raw_body
from lab2prod.kinds.guard import TextGuard

__all__ = ["TextPath", "clean_text", "ENCODING_KEYS", "TextCodec", "KIND"]

ENCODING_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """The reference text model's lab cleanup (text scraped from web pages): HTML entities
    unescaped, tags removed, Unicode NFC, runs of whitespace (newlines, tabs, no-break spaces)
    made one space, ends stripped."""
    text = html.unescape(_TAG.sub(" ", text))
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


class TextPath:
    """text -> the model's inputs for a batch of texts (a dict of int64 tensors [batch, max_length]):
    `clean` (the lab's text cleanup, or None), then `tokenizer` with truncation and padding to
    `max_length` (or the tokenizer's own limit, when lower)."""

    def __init__(self, tokenizer, max_length: int, clean: Callable[[str], str] | None = None, clean_spec: str = ""):
        limit = getattr(tokenizer, "model_max_length", max_length) or max_length
        self.tokenizer, self.max_length = tokenizer, int(min(max_length, limit))
        self.clean, self.clean_spec = clean, clean_spec

    def prepare(self, text: str) -> str:
        """The text as the tokenizer sees it: after the lab's cleanup."""
        return self.clean(text) if self.clean is not None else text

    def count_tokens(self, text: str) -> int:
        """How many tokens the text makes, special tokens included, before any truncation."""
        return len(self.tokenizer(self.prepare(text), truncation=False)["input_ids"])

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer([self.prepare(t) for t in texts], padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in encoded.items() if k in ENCODING_KEYS}

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        """One text as a batch of one."""
        return self.encode([text])


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


KIND = Kind("text", 'JSON {"text": "..."}', codec_for_model, codec_from_spec, request_bodies)
