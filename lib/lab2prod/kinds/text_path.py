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
import re
import unicodedata
from collections.abc import Callable

import torch

__all__ = ["TextPath", "clean_text", "ENCODING_KEYS"]

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
