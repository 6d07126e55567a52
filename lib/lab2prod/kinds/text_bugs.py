"""The text kind's catalog of real serving bugs: each one a serving path that prepares a request as a
real service got it wrong (cut, cased, cleaned, tokenized or decoded differently), with where it
happens and a text that exposes it. Parity replays them on the same requests as the lab path."""

from __future__ import annotations

import json
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import scratch_dir
from lab2prod.kinds.text_path import ENCODING_KEYS, TextPath

__all__ = ["TextBug", "TEXT_BUGS", "TextContext", "text_bug_names", "select_text_bugs", "request_text",
           "LONG_EXAMPLE"]


def request_text(body: bytes) -> str:
    """The text of a JSON `{"text": ...}` request body."""
    return json.loads(body.decode("utf-8"))["text"]


_text = request_text


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
            folder = scratch_dir("lab2prod-vocab-")
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
