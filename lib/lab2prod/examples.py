"""Small user-style models and serving transforms, including ones that go wrong.

    lab2prod run --only export --model lab2prod.examples:tabular_mlp \
        --example-inputs lab2prod.examples:tabular_inputs
    lab2prod run --only export,quantization,benchmark --model lab2prod.examples:token_classifier \
        --example-inputs lab2prod.examples:token_inputs
    lab2prod run --only parity -p serving_transform=lab2prod.examples:serving_bicubic
    lab2prod run --only benchmark --model lab2prod.examples:digits_cnn_tta \
        --example-inputs lab2prod.examples:digits_inputs
    lab2prod run --only export,resilience --model lab2prod.examples:leaky_cnn \
        --example-inputs lab2prod.examples:digits_inputs
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lab2prod.kinds.preprocess import decode_request
from lab2prod.kinds.text import clean_text
from lab2prod.kinds.transforms import DIGITS_RECIPE, digits_lab_transform, recipe_transform
from lab2prod.models.data import digits_images
from lab2prod.models.hf import SAMPLE_LABELS, SAMPLE_TEXTS, tokenize
from lab2prod.models.langid import reference_tokenizer
from lab2prod.models.load import load_model
from lab2prod.models.reference import DigitsCNN, digits_batch

__all__ = [
    "sliced_tabular_inputs",
    "NUM_FEATURES",
    "tabular_inputs",
    "tabular_mlp",
    "gated_net",
    "VOCAB_SIZE",
    "token_inputs",
    "token_classifier",
    "sequence_inputs",
    "lstm_classifier",
    "digits_inputs",
    "digits_cnn_tta",
    "LeakyCNN",
    "leaky_cnn",
    "digits_cnn_factory",
    "digits_transform",
    "save_digits_example",
    "serving_bicubic",
    "serving_resize_without_crop",
    "save_hf_example",
]

NUM_FEATURES = 20


def tabular_inputs(batch_size: int, seed: int) -> torch.Tensor:
    """Standardized tabular rows: `batch_size` x 20 float32 features drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, NUM_FEATURES, generator=generator)


_PRELOADED: list[torch.Tensor] = []


def sliced_tabular_inputs(batch_size: int, seed: int) -> torch.Tensor:
    """The common pattern of a preloaded data set: rows sliced from one 64 MB tensor (800,000 rows of 20
    features). A slice is a view of the whole tensor's storage; lab2prod copies it before
    every export, so the exported file carries a batch, not the data set."""
    if not _PRELOADED:
        _PRELOADED.append(torch.randn(800_000, NUM_FEATURES, generator=torch.Generator().manual_seed(0)))
    start = (seed * 7919) % (800_000 - batch_size)
    return _PRELOADED[0][start:start + batch_size]


def tabular_mlp() -> nn.Module:
    """A non-image classifier: 20 features, 3 classes."""
    return nn.Sequential(nn.Linear(NUM_FEATURES, 64), nn.ReLU(), nn.Linear(64, 3))


class GatedNet(nn.Module):
    """Picks a head from the data: a trace records one branch and silently serves it forever."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(NUM_FEATURES, 32)
        self.positive_head = nn.Linear(32, 3)
        self.negative_head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.body(x))
        if x.mean() > 0:  # data-dependent control flow
            return self.positive_head(hidden)
        return self.negative_head(hidden)


def gated_net() -> nn.Module:
    """The data-dependent model; exported by trace it must fail its parity gate."""
    return GatedNet()


VOCAB_SIZE, MAX_LENGTH = 1000, 32


def token_inputs(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """What a tokenizer hands a text model: int64 `input_ids` (0 is padding) and an int64
    `attention_mask`, right-padded to 32 tokens, each sequence 4 to 32 tokens long."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, MAX_LENGTH + 1, (batch_size,), generator=generator)
    mask = (torch.arange(MAX_LENGTH)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB_SIZE, (batch_size, MAX_LENGTH), generator=generator) * mask
    return {"input_ids": ids, "attention_mask": mask}


def labelled_token_inputs(batch_size: int, seed: int) -> dict:
    """`token_inputs` with a label per sequence, as an input function may return them:
    {"inputs": ..., "labels": ...}; the label is the length bucket (4-11, 12-19, 20-27, 28-32 tokens)."""
    inputs = token_inputs(batch_size, seed)
    return {"inputs": inputs, "labels": ((inputs["attention_mask"].sum(1) - 4) // 8).clamp(max=3)}


class TokenClassifier(nn.Module):
    """Two integer inputs, as a fine-tuned text model takes them: token embeddings, masked mean
    pooling (padding ignored), a Linear-heavy head; 4 classes."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, dim: int = 128, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.encoder = nn.Sequential(nn.Linear(dim, 512), nn.GELU(), nn.Linear(512, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        tokens = self.embed(input_ids)
        tokens = tokens + self.encoder(tokens)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def token_classifier() -> nn.Module:
    """A model with two integer inputs (ids and mask), seeded so its random weights repeat."""
    torch.manual_seed(0)
    return TokenClassifier()


SEQUENCE_LENGTH, SEQUENCE_FEATURES = 24, 16


def sequence_inputs(batch_size: int, seed: int) -> torch.Tensor:
    """Sensor-like sequences: `batch_size` x 24 steps x 16 float32 features drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randn(batch_size, SEQUENCE_LENGTH, SEQUENCE_FEATURES, generator=generator)
    return steps.cumsum(1) / SEQUENCE_LENGTH**0.5  # random walks: correlated in time, like real signals


class LSTMClassifier(nn.Module):
    """Two-layer LSTM over time, then a Linear head on the last step's state (10 classes)."""

    def __init__(self, hidden: int = 256, num_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(SEQUENCE_FEATURES, hidden, num_layers=2, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


def lstm_classifier() -> nn.Module:
    """An LSTM sequence classifier (random weights): dynamic quantization's other home."""
    return LSTMClassifier()


def digits_inputs(batch_size: int, seed: int) -> torch.Tensor:
    """Held-out digits through the lab transform, as a tensor batch (for factory models of digits)."""

    return digits_batch(batch_size, seed, "test")


class ShiftTTA(nn.Module):
    """Test-time augmentation: the mean of the logits over the input and its one-pixel shifts.
    The same weights and nearly the same answers, for `len(shifts) + 1` times the compute: the
    kind of change that slips into a release and costs the latency budget."""

    def __init__(self, model: nn.Module, shifts=((0, 1), (1, 0), (0, -1))):
        super().__init__()
        self.model = model
        self.shifts = [tuple(s) for s in shifts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        for dy, dx in self.shifts:
            logits = logits + self.model(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
        return logits / (len(self.shifts) + 1)


class ImageEmbedder(nn.Module):
    """An image embedding model: a small conv net ending in a 64-d L2-normalized vector, as image
    retrieval models answer (takes 3x224x224 photographs)."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.project = nn.Linear(32 * 16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.project(self.features(x)), dim=1)


def image_embedder() -> nn.Module:
    """An image embedder with seeded random weights: `--model lab2prod.examples:image_embedder`
    is found to be an embedder from its unit-length outputs."""
    torch.manual_seed(0)
    return ImageEmbedder().eval()


def digits_cnn_factory() -> nn.Module:
    """The digits conv net's architecture with fresh weights: what a user's `package.module:factory`
    is; its trained weights come with --weights."""

    return DigitsCNN()


def digits_transform(image):
    """The digits lab transform as a callable (PIL image -> tensor), for `--lab-transform`."""

    return digits_lab_transform()(image)


def save_digits_example(folder: str) -> tuple[str, str]:
    """Write what a user brings: the 360 held-out digits as PNG files in class folders
    (`folder/data/0/0001.png` ...) and the trained digits_cnn's state_dict (`folder/digits_cnn.pt`).
    Returns (data folder, weights file):

        python -c "from lab2prod.examples import save_digits_example; save_digits_example('mine')"
        lab2prod run --model lab2prod.examples:digits_cnn_factory --weights mine/digits_cnn.pt \\
            --data mine/data --lab-transform lab2prod.examples:digits_transform
    """
    from pathlib import Path


    root = Path(folder)
    held_out = digits_images("test")
    for index, (image, label) in enumerate(zip(held_out.images, held_out.labels, strict=True)):
        target = root / "data" / str(int(label)) / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
    weights = root / "digits_cnn.pt"
    torch.save(load_model("digits_cnn").module.state_dict(), weights)
    return str(root / "data"), str(weights)


def digits_cnn_tta() -> nn.Module:
    """The trained digits_cnn wrapped in 4-way shift test-time augmentation (a slower variant)."""

    return ShiftTTA(load_model("digits_cnn").module)


class LeakyCNN(nn.Module):
    """The digits CNN keeping every input it sees, as a cache or a debugging list left in `forward` does: its
    answers are the model's, and its memory grows with every request until the worker dies. TorchScript keeps
    the list (a scripted module's attribute), so the served file leaks too."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.seen = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.model(x)


# TorchScript types the attribute from the class's annotation, which must be a type (not the string this module's
# `from __future__ import annotations` would make of it)
LeakyCNN.__annotations__ = {"seen": list[torch.Tensor]}


def leaky_cnn() -> nn.Module:
    """The trained digits_cnn leaking every input (`LeakyCNN`): the resilience study's soak must fail it."""

    return LeakyCNN(load_model("digits_cnn").module)


# ---------------------------------------------------------------- serving transforms (bytes -> tensor)
# Each looks right and differs from the digits lab transform in one detail.


def serving_bicubic(data: bytes) -> torch.Tensor:
    """The digits recipe with bicubic resizing where the lab used bilinear."""
    from torchvision.transforms import InterpolationMode


    return recipe_transform(DIGITS_RECIPE, interpolation=InterpolationMode.BICUBIC)(decode_request(data))


def serving_resize_without_crop(data: bytes) -> torch.Tensor:
    """The digits recipe with Resize(32) but no CenterCrop: non-square images stay non-square."""
    from torchvision.transforms import v2


    return v2.Compose([
        v2.ToImage(), v2.Resize(DIGITS_RECIPE.resize, antialias=True), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(DIGITS_RECIPE.mean), std=list(DIGITS_RECIPE.std)),
    ])(decode_request(data))


def save_hf_example(folder: str, task: str = "classifier", layers: int = 2, hidden: int = 64, seed: int = 0,
                    train_steps: int = 60, outliers: int = 0, outlier_scale: float = 200.0,
                    vocab_size: int = 0, heads: int = 0) -> str:
    """Write a small Hugging Face checkpoint to `folder` the way a user's fine-tuned model is saved:
    a WordPiece tokenizer trained here on the bundled text sample and a BERT built from a config
    (seeded), both with save_pretrained. `task` "classifier" writes a sequence classifier with 4
    labels, fine-tuned for `train_steps` full-batch steps on the labelled sample (a few seconds),
    so its answers are confident like a real fine-tuned model's; "embedder" writes a plain encoder
    with its random weights. `outliers` > 0 gives that many Linear layers (spread over the depth)
    one input channel `outlier_scale` times larger, as trained transformers have outlier
    channels: per-tensor int8 then loses those layers' small weights, and a selective recipe
    is needed to keep the fidelity. `vocab_size` (0: the tokenizer's 400 words) and `heads` (0: one per 32
    wide) give a model the size of a real one: all-MiniLM-L6-v2's shape (22.7M parameters) is
    `layers=6, hidden=384, heads=12, vocab_size=30522`. Returns the folder:

        python -c "from lab2prod.examples import save_hf_example; save_hf_example('tiny-bert')"
        lab2prod run --model hf:tiny-bert
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast


    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(SAMPLE_TEXTS * 4, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    labels = ["complaint", "question", "news", "praise"]
    config = BertConfig(vocab_size=max(vocab_size, tokenizer.get_vocab_size()), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=heads or max(1, hidden // 32),
                        intermediate_size=hidden * 4,
                        max_position_embeddings=128, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if task == "classifier" else BertModel(config)
    if task == "classifier" and train_steps:
        batch = tokenize(fast, SAMPLE_TEXTS)
        labels = torch.tensor(SAMPLE_LABELS)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(train_steps):
            optimizer.zero_grad()
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
    if outliers:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features != len(labels)]
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for index in np.linspace(0, len(linears) - 1, outliers).round().astype(int):
                column = int(torch.randint(0, linears[index].in_features, (1,), generator=generator))
                linears[index].weight[:, column] *= outlier_scale
    model.eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def tokenizer_max_length_16(text: str) -> dict:
    """A serving tokenizer for text_langid that truncates and pads to 16 tokens where the lab used
    72: the lab's cleanup and tokenizer otherwise. It fails `parity:serving` and lists the requests:

        lab2prod run --model text_langid --only parity -p serving_transform=lab2prod.examples:tokenizer_max_length_16
    """

    return dict(reference_tokenizer()(clean_text(text), max_length=16, truncation=True, padding="max_length",
                                      return_tensors="pt"))
