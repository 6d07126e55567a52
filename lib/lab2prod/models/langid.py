"""The reference text model: which of nine European languages a sentence is written in.

Data that ships offline: the lorem word lists of Faker (MIT licence, on PyPI) for Czech,
Danish, German, English, Spanish, French, Italian, Dutch and Polish, made into seeded sentences
of 3 to 16 words (capitalized, punctuated, some numbers). A fifth of them are written the way
text scraped from web pages arrives: HTML tags and entities, doubled spaces, line breaks and
no-break spaces; the lab cleans every text with `lab2prod.kinds.text.clean_text` before tokenizing.
Held-out sentences are drawn with another seed. The languages share short words ("a", "de",
"en", "i", "na"), so short sentences are genuinely hard.

The model is what a user's fine-tuned checkpoint is: a cased WordPiece tokenizer trained here
with the tokenizers library, a 2-layer BERT sequence classifier built from a config, fine-tuned
on 2 cores in well under a minute, both saved with `save_pretrained` into the cache (checksummed)
and loaded through the same `hf:` path as a user's folder.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lab2prod.core import extras
from lab2prod.core.files import sha256_file
from lab2prod.core.paths import CACHE_DIR
from lab2prod.kinds.text import TextPath, clean_text

__all__ = ["LANGUAGES", "LANGID_TRAINING", "TextSet", "language_texts", "reference_folder", "reference_tokenizer",
           "older_tokenizer_folder", "MAX_LENGTH"]

# Faker locale -> class name
LANGUAGES = {"cs_CZ": "czech", "da_DK": "danish", "de_DE": "german", "en_US": "english", "es_ES": "spanish",
             "fr_FR": "french", "it_IT": "italian", "nl_BE": "dutch", "pl_PL": "polish"}
PER_LANGUAGE = {"train": 240, "test": 60}
SEEDS = {"train": 11, "test": 12}
NOISY_SHARE = 0.2  # texts written as scraped web text
MAX_LENGTH = 72  # tokens; every generated text fits (the longest makes 65)
LANGID_TRAINING = {"epochs": 8, "batch_size": 32, "lr": 2e-3, "seed": 0, "threads": 1, "vocab_size": 3000,
                   "hidden": 64, "layers": 2, "heads": 2, "intermediate": 128}
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")  # what the tokenizer returns, as BERT's does
OLDER_VOCAB_SIZE = 1500  # the "older tokenizer" of the bug catalog: trained on the first half, smaller


@dataclass
class TextSet:
    """Raw texts (as clients send them) with their labels (indices of `class_names`)."""

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def _words(locale: str) -> list[str]:
    module = importlib.import_module(f"faker.providers.lorem.{locale}")
    return [w for w in module.Provider.word_list if w.strip() and " " not in w]


def _sentence(words: list[str], rng: np.random.Generator) -> str:
    count = int(rng.choice([3, 4, 5, 6, 7, 8, 10, 12, 14, 16]))
    picked = [words[int(i)] for i in rng.integers(0, len(words), size=count)]
    if rng.random() < 0.15:
        picked.insert(int(rng.integers(0, count)), str(int(rng.integers(2, 2030))))
    if count > 6 and rng.random() < 0.5:
        at = int(rng.integers(2, count - 2))
        picked[at] = picked[at] + ","
    text = " ".join(picked)
    return text[0].upper() + text[1:] + str(rng.choice([".", ".", ".", "?", "!"]))


def _scraped(text: str, rng: np.random.Generator) -> str:
    """The text as scraped from a web page: tags, entities, doubled spaces, line breaks."""
    words = text.split(" ")
    at = int(rng.integers(1, max(2, len(words))))
    words[at - 1] = words[at - 1] + str(rng.choice(["&nbsp;", "  ", "\n", " <br/>"]))
    text = " ".join(words).replace(" ", "  ", int(rng.integers(0, 3)))
    wrap = [("<p>", "</p>"), ("<div class=\"post\">", "</div>"), ("<b>", "</b> &amp; more"), ("\t", " \n")]
    start, end = wrap[int(rng.integers(0, len(wrap)))]
    return f"{start}{text}{end}"


@lru_cache(maxsize=2)
def language_texts(split: str) -> TextSet:
    """The labelled sentences of a split, "train" (2160) or "test" (540, held out: another seed),
    in a seeded shuffled order."""
    if split not in SEEDS:
        raise ValueError(f"split {split!r} is not train or test")
    rng = np.random.default_rng(SEEDS[split])
    texts, labels = [], []
    for label, locale in enumerate(LANGUAGES):
        words = _words(locale)
        for _ in range(PER_LANGUAGE[split]):
            text = _sentence(words, rng)
            texts.append(_scraped(text, rng) if rng.random() < NOISY_SHARE else text)
            labels.append(label)
    order = rng.permutation(len(texts))
    return TextSet([texts[i] for i in order], np.asarray(labels)[order], list(LANGUAGES.values()))


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A cased WordPiece tokenizer (BERT's pre-tokenizer and template, accents and case kept)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=MAX_LENGTH, do_lower_case=False,
                                   model_input_names=list(INPUT_NAMES))


def _training_key() -> str:
    config = {**LANGID_TRAINING, "languages": list(LANGUAGES), "per_language": PER_LANGUAGE, "seeds": SEEDS,
              "noisy": NOISY_SHARE, "max_length": MAX_LENGTH, "inputs": INPUT_NAMES,
              "torch": ".".join(torch.__version__.split(".")[:2])}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def train(folder: Path) -> dict:
    """Train the tokenizer and the classifier on the training sentences (cleaned as the lab
    cleans them), deterministically on one thread, and save both into `folder`."""
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging


    hf_logging.set_verbosity_error()
    training = LANGID_TRAINING
    data = language_texts("train")
    cleaned = [clean_text(t) for t in data.texts]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(training["threads"])
    try:
        tokenizer = _train_tokenizer(cleaned, training["vocab_size"])
        path = TextPath(tokenizer, MAX_LENGTH, clean_text)
        names = data.class_names
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=training["hidden"],
                            num_hidden_layers=training["layers"], num_attention_heads=training["heads"],
                            intermediate_size=training["intermediate"], max_position_embeddings=MAX_LENGTH,
                            num_labels=len(names), id2label=dict(enumerate(names)),
                            label2id={n: i for i, n in enumerate(names)})
        torch.manual_seed(training["seed"])
        generator = torch.Generator().manual_seed(training["seed"])
        model = BertForSequenceClassification(config)
        encoded = path.encode(data.texts)
        labels = torch.as_tensor(data.labels)
        optimizer = torch.optim.AdamW(model.parameters(), lr=training["lr"])
        model.train()
        for _ in range(training["epochs"]):
            for batch in torch.randperm(len(labels), generator=generator).split(training["batch_size"]):
                optimizer.zero_grad()
                model(**{k: v[batch] for k, v in encoded.items()}, labels=labels[batch]).loss.backward()
                optimizer.step()
        model.eval()
        test = language_texts("test")
        with torch.inference_mode():
            logits = model(**path.encode(test.texts)).logits
        accuracy = float((logits.argmax(1).numpy() == test.labels).mean())
    finally:
        torch.set_num_threads(previous_threads)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    older = _train_tokenizer(cleaned[: len(cleaned) // 2], OLDER_VOCAB_SIZE)
    older.save_pretrained(folder / "older-tokenizer")
    return {"heldout_accuracy": round(accuracy, 4)}


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "lab2prod-reference.json"):
        digest.update(file.relative_to(folder).as_posix().encode() + sha256_file(file).encode())
    return digest.hexdigest()


def reference_folder(cache_dir: Path | None = None) -> tuple[Path, dict]:
    """(folder, metrics) of the trained reference text model, a save_pretrained folder in the
    cache; trained when absent or when its files no longer match their checksum."""
    import shutil
    import tempfile

    extras.require("hf", "the reference text model text_langid")
    cache_dir = Path(cache_dir) if cache_dir else CACHE_DIR
    folder = cache_dir / f"text_langid-{_training_key()}"
    meta_path = folder / "lab2prod-reference.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") == _folder_hash(folder):
            return folder, meta["metrics"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".text_langid-", dir=cache_dir))
    try:
        metrics = train(work)
        meta = {"model": "text_langid", "training": LANGID_TRAINING, "metrics": metrics,
                "data": "faker lorem word lists (MIT): " + ", ".join(LANGUAGES), "sha256": _folder_hash(work)}
        (work / "lab2prod-reference.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return folder, metrics


def older_tokenizer_folder(cache_dir: Path | None = None) -> Path:
    return reference_folder(cache_dir)[0] / "older-tokenizer"


@lru_cache(maxsize=1)
def reference_tokenizer():
    """The reference text model's tokenizer, loaded from its folder (trained when absent)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(reference_folder()[0]), local_files_only=True)
