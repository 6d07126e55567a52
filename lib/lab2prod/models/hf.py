"""Hugging Face checkpoints from a local folder (`--model hf:PATH`): a transformers model and its
tokenizer saved with `save_pretrained`, never fetched from a hub.

A sequence classifier answers logits; any other model is an encoder whose answer is the mean of
its last hidden states over the real tokens (a sentence embedding). Inputs are the tokenizer
applied to the user's texts, or to a small bundled sample when none are given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from lab2prod.core import extras
from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.inputs import draw_indices
from lab2prod.kinds.text import TextPath

__all__ = ["SAMPLE_TEXTS", "SAMPLE_LABELS", "HFClassifier", "HFEncoder", "check_folder", "load_hf", "tokenize"]

# A small, varied English sample (reviews, support tickets, news, questions) for models given
# without texts of their own: lengths from 3 to about 40 words, some punctuation and digits.
SAMPLE_TEXTS = [
    "The battery lasts two full days and charging takes under an hour.",
    "Terrible service, I waited 45 minutes and nobody answered the phone.",
    "Can I change the delivery address after the order has shipped?",
    "Shares of the chipmaker rose 7% after it raised its forecast for the year.",
    "Great little cafe.",
    "The update broke the login page; users on Safari see a blank screen.",
    "How do I reset my password if I no longer have access to my email?",
    "The council approved the new cycling lanes by a vote of 9 to 4.",
    "I returned the shoes because they were half a size too small.",
    "Refund received within three days, thank you for the quick help!",
    "Scientists found water ice in craters near the moon's south pole.",
    "Is the warranty still valid if I bought the laptop second hand?",
    "The hotel room was clean but the walls were thin and the street was loud all night.",
    "Our team won the final 3-1 after extra time.",
    "Please cancel my subscription before the next billing date.",
    "The museum reopens on Monday with a new wing for modern art.",
    "Absolutely love it.",
    "Why was I charged twice for the same order?",
    "Heavy rain is expected across the north with winds up to 80 km/h.",
    "The manual is confusing and the app keeps crashing when I pair the device.",
    "Fast shipping, well packed, works exactly as described.",
    "What time does the pharmacy close on public holidays?",
    "The central bank held interest rates steady for the third month in a row.",
    "Not worth the price: the screen scratches easily and the speaker crackles.",
    "My package shows delivered but it is not at my door.",
    "The festival drew more than 50,000 visitors over the weekend.",
    "Does this model support wireless charging?",
    "Friendly staff, tasty food, we will definitely come back.",
    "An earthquake of magnitude 5.2 shook the coast early on Tuesday; no damage was reported.",
    "The invoice lists the wrong VAT number, please send a corrected copy.",
    "Meh.",
    "Researchers trained a robot to fold laundry using a few hundred demonstrations.",
]

# What each sample text is, for the example classifier (`lab2prod.examples.save_hf_example`):
# 0 complaint, 1 question, 2 news, 3 praise.
SAMPLE_LABELS = [3, 0, 1, 2, 3, 0, 1, 2, 0, 3, 2, 1, 0, 2, 1, 2, 3, 1, 2, 0, 3, 1, 2, 0, 0, 2, 1, 3, 2, 0, 0, 2]

MAX_LENGTH = 64  # tokens per sample text; longer texts are truncated (the model's own limit if lower)


def check_folder(path: str) -> Path:
    """The folder of an `hf:PATH` spec, checked for what `save_pretrained` writes: config.json,
    the weights (model.safetensors, sharded or not, or pytorch_model.bin) and a tokenizer; a
    Lab2ProdError naming the missing file otherwise (nothing is downloaded)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise Lab2ProdError(f"hf:{path}: folder {str(folder)!r} does not exist; save the model and its tokenizer "
                            "there with save_pretrained")
    if not (folder / "config.json").is_file():
        raise Lab2ProdError(f"hf:{path}: {str(folder / 'config.json')!r} is missing; model.save_pretrained(folder) "
                            "writes it")
    weights = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]
    if not any((folder / name).is_file() for name in weights):
        raise Lab2ProdError(f"hf:{path}: no weights in {str(folder)!r} (looked for {', '.join(weights)}); "
                            "model.save_pretrained(folder) writes them")
    tokenizers = ["tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json"]
    if not any((folder / name).is_file() for name in tokenizers):
        raise Lab2ProdError(f"hf:{path}: no tokenizer in {str(folder)!r} (looked for {', '.join(tokenizers)}); "
                            "tokenizer.save_pretrained(folder) writes it")
    return folder


class HFClassifier(nn.Module):
    """A transformers sequence classifier called with tensors only: returns the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          return_dict=False)[0]


class HFEncoder(HFClassifier):
    """A transformers encoder called with tensors only: the mean of the last hidden states over
    the real tokens (padding excluded), one embedding per text."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = super().forward(input_ids, attention_mask, token_type_ids)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def load_hf(path: str):
    """(module, tokenizer, task, class names) for the checkpoint in `path`: task is "classifier"
    for a *ForSequenceClassification architecture, else "embedder"."""
    folder = check_folder(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only, never the hub
    # transformers imports torchao, whose import logs a deprecation from torch's pytree registry
    # on every load; it says nothing about the user's model and would make notebook output unstable.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    extras.require("hf", f"hf:{path}")
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per load would fill every notebook's output
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        loader = AutoModelForSequenceClassification if classifier else AutoModel
        model = loader.from_pretrained(folder, local_files_only=True).eval()
    except Exception as exc:
        raise Lab2ProdError(f"hf:{path} does not load with transformers ({one_line(exc)}); save it with "
                            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)") from None
    labels = None
    if classifier and getattr(config, "id2label", None):
        labels = [str(config.id2label[i]) for i in sorted(config.id2label)]
    module = (HFClassifier if classifier else HFEncoder)(model).eval()
    return module, tokenizer, "classifier" if classifier else "embedder", labels


def tokenize(tokenizer, texts: list[str], max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
    """The tokenizer's tensors for `texts`, padded to `max_length` (or the model's own limit)."""

    return TextPath(tokenizer, max_length).encode(list(texts))


def text_batches(path, texts: list[str] | None = None):
    """make_inputs(batch_size, seed, split) over `texts` (default the bundled sample): a seeded
    draw of texts (every text, in order, for split "all") through the text path `path`
    (lab2prod.kinds.text.TextPath: the lab's cleanup and tokenizer)."""

    pool = list(texts or SAMPLE_TEXTS)

    def make(batch_size: int, seed: int = 0, split: str = "test") -> dict[str, torch.Tensor]:
        return path.encode([pool[i] for i in draw_indices(len(pool), batch_size, seed, split)])

    return make
