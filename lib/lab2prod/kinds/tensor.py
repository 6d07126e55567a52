"""The tensor kind: a request is JSON of named arrays (one item without the batch dimension), checked
against the lab's names, dtypes, shapes and ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lab2prod.core.inputs import Inputs, describe, tensors
from lab2prod.kinds.base import JSON_CONTENT_TYPE, Kind, guard_fields, raw_body
from lab2prod.kinds.guard import TensorGuard

__all__ = ["TensorCodec", "named_tensors", "input_ranges", "tensor_features", "KIND"]


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
            value = body if isinstance(body, dict) else json.loads(raw_body(body).decode("utf-8"))
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
                "guard": guard_fields(self.guard)}, []

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


def input_ranges(sample: Inputs) -> dict:
    return {name: [float(t.min()), float(t.max())] for name, t in named_tensors(sample).items()
            if not torch.is_floating_point(t) and t.dtype != torch.bool and t.numel()}


def named_tensors(inputs: Inputs) -> dict[str, torch.Tensor]:
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, tuple):
        return {f"input_{i}": t for i, t in enumerate(inputs)}
    return {"input": inputs}


def codec_for_model(loaded, guarded: bool = True, max_bytes: int = 1_000_000, z_limit: float = 5.0) -> TensorCodec:
    """The tensor codec of a model fed tensors: the names, dtypes and shapes of the lab's inputs, and a
    guard with their ranges."""
    sample = loaded.make_inputs(256, 0, "train")
    structure = "dict" if isinstance(sample, dict) else ("tuple" if isinstance(sample, tuple) else "tensor")
    inputs = describe(sample)
    return TensorCodec(inputs, structure, TensorGuard(inputs, max_bytes, input_ranges(sample)) if guarded else None)


def codec_from_spec(spec: dict, model_dir: Path) -> TensorCodec:
    """The tensor codec rebuilt inside the server from the archive's description of the inputs."""
    guard = spec.get("guard")
    return TensorCodec(spec["inputs"], spec["structure"], TensorGuard(**guard) if guard else None)


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Held-out items as a client sends them: JSON of named arrays, one item without the batch dimension."""
    return [(name, json.dumps({key: value.tolist() for key, value in item.items()}).encode())
            for name, item in loaded.examples(count, seed)]


def tensor_features(inputs: Inputs) -> np.ndarray:
    """Per item, for each input tensor: mean and std of a float tensor; count and mean of the
    non-zero values of an integer one (token ids: length and typical id)."""

    columns = []
    for t in tensors(inputs):
        flat = t.reshape(t.shape[0], -1)
        if torch.is_floating_point(flat):
            columns += [flat.float().mean(1), flat.float().std(1) if flat.shape[1] > 1 else flat.float()[:, 0] * 0]
        else:
            nonzero = (flat != 0).float()
            columns += [nonzero.sum(1), (flat.float() * nonzero).sum(1) / nonzero.sum(1).clamp(min=1)]
    return torch.stack(columns, 1).double().numpy()


KIND = Kind("tensor", "JSON of named arrays, one item", codec_for_model, codec_from_spec, request_bodies, (),
            tensor_features)
