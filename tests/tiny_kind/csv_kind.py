"""A tiny kind, added the way docs/architecture.md says (one module with a `KIND`, one registry line): the request
is one CSV line of numbers (`0.25,1.5,-3`), the model's input one row of that width."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lab2prod.kinds.base import Kind
from lab2prod.kinds.guard import Rejected

__all__ = ["CsvCodec", "KIND", "make_inputs", "mlp"]

WIDTH = 6


def make_inputs(batch_size: int, seed: int = 0) -> torch.Tensor:
    """The lab's rows: `batch_size` x WIDTH floats, drawn from the seed."""
    return torch.randn(batch_size, WIDTH, generator=torch.Generator().manual_seed(seed))


def mlp() -> torch.nn.Module:
    """A small classifier of the rows (three classes), seeded."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


class CsvCodec:
    """One CSV line -> a [1, width] float tensor; with a guard, the size, the count of values and finiteness are
    checked."""

    kind, suffix, content_type = "csv", ".csv", "text/csv"

    def __init__(self, width: int, max_bytes: int | None = None):
        self.width, self.max_bytes = width, max_bytes
        self.guard = {"max_bytes": max_bytes} if max_bytes else None

    def __call__(self, body) -> torch.Tensor:
        body = bytes(body or b"")
        if self.max_bytes and len(body) > self.max_bytes:
            raise Rejected("size", f"{len(body)} bytes > {self.max_bytes}; send one line of {self.width} numbers")
        try:
            values = [float(v) for v in body.decode("utf-8").strip().split(",")]
        except (UnicodeDecodeError, ValueError):
            raise Rejected("format", f"not a CSV line of numbers; send {self.width} comma-separated numbers") from None
        if len(values) != self.width:
            raise Rejected("shape", f"{len(values)} values; the model takes {self.width}")
        if self.guard and not all(math.isfinite(v) for v in values):
            raise Rejected("value", "NaN or infinite value; send finite numbers")
        return torch.tensor(values).unsqueeze(0)

    def archive(self, work: Path) -> tuple[dict, list[Path]]:
        return {"kind": self.kind, "width": self.width, "max_bytes": self.max_bytes}, []

    def hostile(self, max_bytes: int, good: bytes) -> list[tuple[str, object]]:
        return [("empty body", b""), ("not UTF-8", b"\xff\xfe"), ("words", b"a,b,c,d,e,f"),
                ("too few values", b"1,2"), ("NaN", b",".join([b"nan"] * self.width)),
                ("oversize body", b"1," * max_bytes)]


def codec_for_model(loaded, guarded: bool = True, max_bytes: int = 1_000_000, z_limit: float = 5.0) -> CsvCodec:
    return CsvCodec(int(loaded.make_inputs(1, 0).shape[1]), max_bytes if guarded else None)


def codec_from_spec(spec: dict, model_dir: Path) -> CsvCodec:
    return CsvCodec(spec["width"], spec["max_bytes"])


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    return [(name, ",".join(f"{v:.6g}" for v in item["input"].tolist()).encode())
            for name, item in loaded.examples(count, seed)]


KIND = Kind("csv", "one CSV line of numbers", codec_for_model, codec_from_spec, request_bodies)
